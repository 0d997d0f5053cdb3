"""Feast field tags as embedding settings, applied to a spec mapping before validation.

Lives in ``spec`` because a ``data.source: feast`` spec may take its table dims from the
tags, which validation needs; ``feast`` itself is imported lazily, only for feast specs.
:mod:`torchrec_ple.data.feast` (retrieval, online features) builds on these functions.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple, Union

from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec.errors import DataError, SpecError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureService, FeatureStore

# Field tags read as embedding settings.
FEAST_TAGS = ("num_embeddings", "embedding_dim", "pooling")
FeatureRefs = Union[str, Sequence[str], "FeatureService"]
PathLike = Union[str, Path]


def import_feast() -> Any:
    """The ``feast`` module (a DataError naming the extra when it is not installed)."""
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
    return import_feast().FeatureStore(repo_path=str(path))


# ---------------------------------------------------------------------------- features


def resolve_refs(store: FeatureStore, features: FeatureRefs) -> Union[List[str], FeatureService]:
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
                found=first_line(e),
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
    resolved = resolve_refs(store, features)
    if isinstance(resolved, list):
        return [tuple(r.split(":", 1)) for r in resolved]  # type: ignore[misc]
    out: List[Tuple[str, str]] = []
    for proj in resolved.feature_view_projections:
        out += [(proj.name, f.name) for f in proj.features]
    return out


def feature_view(store: FeatureStore, name: str) -> Any:
    """A (batch or on-demand) feature view of the registry by name, or a DataError."""
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


def column_name(view: str, feature: str, full_feature_names: bool) -> str:
    """The retrieved column of a feature: ``view__feature`` with full feature names."""
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
        view = feature_view(store, view_name)
        field = next((f for f in view.features if f.name == feature), None)
        if field is None:
            raise DataError(
                expected=f"a feature '{feature}' in Feast feature view '{view_name}'",
                found=f"features {[f.name for f in view.features]}",
            )
        out[column_name(view_name, feature, full_feature_names)] = dict(field.tags or {})
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
        kind = FEATURE_KINDS.find(ftype) if isinstance(ftype, str) else None
        sparse = kind is not None and kind.is_sparse(f)
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
        if (
            "num_embeddings" in t
            and kind is not None
            and kind.column_kind != "numeric"
            and not any(k in f for k in id_keys)
        ):
            f["num_embeddings"] = _tag_int(column, "num_embeddings", t["num_embeddings"])
    return spec


def with_feast_tags(raw: Any, base: Path) -> Any:
    """For ``data.source: feast``: the spec mapping with embedding settings from Feast tags.

    The loader runs this before validation because the tags may supply the table dims.
    Feast is imported only here, and only for feast specs; any other spec (or a feast
    section the checker will refuse) comes back as it is.

    Args:
        raw (Any): the plain spec data, after ``--set`` overrides.
        base (Path): the folder a relative ``data.feast.repo_path`` resolves against.

    Returns:
        Any: ``raw``, or a deep copy with the tags merged (:func:`merge_feature_tags`).

    Raises:
        SpecError: the feast extra is missing, or the repo or its features cannot be read.
    """
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or data.get("source") != "feast":
        return raw
    fe = data.get("feast")
    if not isinstance(fe, dict) or not isinstance(fe.get("repo_path"), str):
        return raw  # the checker reports the missing/invalid section
    refs = fe.get("feature_service") or fe.get("features")
    if not refs:
        return raw
    repo = Path(os.path.expanduser(fe["repo_path"]))
    repo = repo if repo.is_absolute() else base / repo
    try:
        store = open_store(repo)
        tags = feature_tags(store, refs, bool(fe.get("full_feature_names", False)))
    except ImportError:
        raise SpecError(
            "data.source",
            "the feast extra installed (pip install -r requirements/feast.txt)",
            "feast",
        ) from None
    except Exception as e:  # Feast raises many types; the user needs the message, in one line
        raise SpecError(
            "data.feast", "a readable Feast repo and existing features", first_line(e, 200)
        ) from None
    return merge_feature_tags(raw, tags)


# The former private names, for modules not yet moved to the public ones.
_feast = import_feast
_resolve = resolve_refs
_view = feature_view
_column_name = column_name
