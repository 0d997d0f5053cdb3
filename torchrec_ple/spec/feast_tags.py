"""Feast field tags as embedding settings, applied to a spec mapping before validation.

Lives in ``spec`` because a ``data.source: feast`` spec may take its table dims from the
tags, which validation needs; ``feast`` itself is imported lazily, only for feast specs.
:mod:`torchrec_ple.data.feast` (retrieval, online features) builds on these functions.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple, Union

from torchrec_ple.spec.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureService, FeatureStore

# Field tags read as embedding settings.
FEAST_TAGS = ("num_embeddings", "embedding_dim", "pooling")
FeatureRefs = Union[str, Sequence[str], "FeatureService"]
PathLike = Union[str, Path]


def _feast() -> Any:
    try:
        # Feast's modules call warnings.simplefilter("once", DeprecationWarning) at import,
        # which would show every library's deprecation notices: keep the caller's filters.
        with warnings.catch_warnings():
            import feast
    except ImportError:
        raise DataError(
            expected="the feast package for data.source 'feast'",
            found="it is not installed",
            hint="pip install -r requirements/feast.txt",
        ) from None
    return feast


def open_store(repo_path: PathLike) -> FeatureStore:
    """A ``FeatureStore`` over a repo folder holding ``feature_store.yaml``."""
    path = Path(repo_path).resolve()
    if not (path / "feature_store.yaml").is_file():
        raise DataError(
            file=str(path / "feature_store.yaml"),
            expected="a Feast feature repo (feature_store.yaml)",
            found="nothing",
        )
    return _feast().FeatureStore(repo_path=str(path))


# ---------------------------------------------------------------------------- features


def _resolve(store: FeatureStore, features: FeatureRefs) -> Union[List[str], FeatureService]:
    """Feature refs (``view:feature``) as a list, or a FeatureService object.

    A single string without ``:`` names a feature service.
    """
    if isinstance(features, str):
        if ":" in features:
            return [features]
        try:
            return store.get_feature_service(features)
        except Exception as e:  # Feast raises FeatureServiceNotFoundException
            raise DataError(
                expected=f"a feature service named '{features}' in the Feast registry",
                found=str(e).splitlines()[0] if str(e) else type(e).__name__,
            ) from None
    if hasattr(features, "feature_view_projections"):
        return features  # type: ignore[return-value]
    refs = list(features)  # type: ignore[arg-type]
    bad = [r for r in refs if ":" not in r]
    if bad:
        raise DataError(expected="feature references 'view:feature'", found=repr(bad[0]))
    return refs


def feature_refs(store: FeatureStore, features: FeatureRefs) -> List[Tuple[str, str]]:
    """(feature view name, feature name) of every requested feature, in request order."""
    resolved = _resolve(store, features)
    if isinstance(resolved, list):
        return [tuple(r.split(":", 1)) for r in resolved]  # type: ignore[misc]
    out: List[Tuple[str, str]] = []
    for proj in resolved.feature_view_projections:
        out += [(proj.name, f.name) for f in proj.features]
    return out


def _view(store: FeatureStore, name: str) -> Any:
    try:
        return store.get_feature_view(name)
    except Exception:
        try:
            return store.get_on_demand_feature_view(name)
        except Exception:
            raise DataError(
                expected=f"a feature view named '{name}' in the Feast registry",
                found="none (run `feast apply`?)",
            ) from None


def _column_name(view: str, feature: str, full_feature_names: bool) -> str:
    return f"{view}__{feature}" if full_feature_names else feature


def feature_tags(
    store: FeatureStore, refs: FeatureRefs, full_feature_names: bool = False
) -> Dict[str, Dict[str, str]]:
    """Tags of the requested Feast fields, by retrieved column name.

    Args:
        store (FeatureStore): the store.
        refs (FeatureRefs): ``view:feature`` refs, or a feature service (object or name).
        full_feature_names (bool): columns are ``view__feature`` (as retrieved with
            ``full_feature_names=True``). Default: False.

    Returns:
        Dict[str, Dict[str, str]]: ``{column: {tag: value}}`` for every requested field
        (empty dicts for fields without tags).
    """
    out: Dict[str, Dict[str, str]] = {}
    for view_name, feature in feature_refs(store, refs):
        view = _view(store, view_name)
        field = next((f for f in view.features if f.name == feature), None)
        if field is None:
            raise DataError(
                expected=f"a feature '{feature}' in Feast feature view '{view_name}'",
                found=f"features {[f.name for f in view.features]}",
            )
        out[_column_name(view_name, feature, full_feature_names)] = dict(field.tags or {})
    return out


def _tag_int(column: str, tag: str, value: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise DataError(
            column=column, expected=f"Feast tag {tag} as an integer >= 1", found=repr(value)
        )
    return n


def merge_feature_tags(
    raw_spec: Mapping[str, Any], tags: Mapping[str, Mapping[str, str]]
) -> Dict[str, Any]:
    """The spec mapping with embedding settings filled from Feast field tags.

    A tag fills a sparse feature (``categorical``/``sequence``, or a bucketized numeric)
    reading that Feast column only where the YAML leaves the setting out, so the YAML
    always overrides the tags:

    * ``embedding_dim`` -> ``embedding.dim`` and ``pooling`` -> ``embedding.pooling``,
      unless any feature of the same table sets it;
    * ``num_embeddings`` -> ``num_embeddings`` (identity ids in ``[0, n)``) of a
      categorical/sequence feature setting none of ``num_embeddings``, ``hash_buckets``,
      ``vocab``.

    Args:
        raw_spec (Mapping[str, Any]): the spec YAML mapping (before validation).
        tags (Mapping[str, Mapping[str, str]]): :func:`feature_tags`' result.

    Returns:
        Dict[str, Any]: a deep copy with the tags applied.
    """
    spec = copy.deepcopy(dict(raw_spec))
    features = spec.get("features")
    if not isinstance(features, list):
        return spec
    dicts = [f for f in features if isinstance(f, dict)]

    def table(f: Dict[str, Any]) -> Any:
        emb = f.get("embedding")
        t = (emb.get("table") if isinstance(emb, dict) else None) or f.get("name")
        # A malformed name or table (a list, a mapping) is left to the checker to report.
        return t if isinstance(t, str) else None

    def table_sets(t: Any, key: str) -> bool:
        return any(
            isinstance(f.get("embedding"), dict) and f["embedding"].get(key) is not None
            for f in dicts
            if table(f) == t
        )

    filled: Dict[Tuple[Any, str], bool] = {}
    for f in dicts:
        column = f.get("column") or f.get("name")
        ftype = f.get("type")
        sparse = ftype in ("categorical", "sequence") or (ftype == "numeric" and f.get("buckets"))
        if not isinstance(column, str) or column not in tags or not sparse or table(f) is None:
            continue
        t = tags[column]
        emb_updates: Dict[str, Any] = {}
        if (
            "embedding_dim" in t
            and not table_sets(table(f), "dim")
            and not filled.get((table(f), "dim"))
        ):
            emb_updates["dim"] = _tag_int(column, "embedding_dim", t["embedding_dim"])
        if (
            "pooling" in t
            and not table_sets(table(f), "pooling")
            and not filled.get((table(f), "pooling"))
        ):
            emb_updates["pooling"] = str(t["pooling"]).lower()
        if emb_updates:
            emb = f.get("embedding")
            f["embedding"] = {**(emb if isinstance(emb, dict) else {}), **emb_updates}
            for k in emb_updates:
                filled[(table(f), k)] = True
        id_keys = ("num_embeddings", "hash_buckets", "vocab")
        if "num_embeddings" in t and ftype != "numeric" and not any(k in f for k in id_keys):
            f["num_embeddings"] = _tag_int(column, "num_embeddings", t["num_embeddings"])
    return spec
