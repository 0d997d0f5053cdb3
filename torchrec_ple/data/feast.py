"""Rows from a Feast feature store: point-in-time training tables, tags, online rows.

Feast is an optional extra (``pip install -r requirements/feast.txt``) imported only
inside these functions: the core package never pays its import time (~15 s of CPU).

* :func:`load_feast_tables`: ``get_historical_features(...).to_arrow()`` over an entity
  dataframe (entity keys, event timestamps, labels) -> (train, validation) Arrow tables,
  in the entity dataframe's row order;
* :func:`feature_tags` / :func:`merge_feature_tags`: embedding settings from Feast field
  tags (``num_embeddings``, ``embedding_dim``, ``pooling``), the YAML spec overriding them;
* :func:`online_table`: ``get_online_features(...).to_dict()`` -> Arrow, typed from the
  feature views' schemas, ready for the saved transforms.

Feast's ``to_tensor()`` is never used: rows go through the same Arrow transforms as files.

Caveats checked here:

* the ``file`` offline store (Feast's default for the ``local`` provider) silently drops
  entity rows sharing an entity key and timestamp (Feast issue 6787), drops rows without
  a feature row inside the TTL, and turns integer columns holding nulls into floats: a
  warning says so; use ``offline_store: {type: duckdb}``;
* DuckDB reads a ``FileSource`` path relative to the working directory, not the repo:
  relative local paths are refused (:func:`check_sources`).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.spec.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureService, FeatureStore

__all__ = [
    "FEAST_TAGS",
    "FeastOfflineStoreWarning",
    "check_offline_store",
    "check_sources",
    "feature_refs",
    "feature_tags",
    "fill_nulls",
    "historical_table",
    "load_feast_tables",
    "merge_feature_tags",
    "online_table",
    "open_store",
    "read_entity_df",
]

# Field tags read as embedding settings, and the spec key each one fills.
FEAST_TAGS = ("num_embeddings", "embedding_dim", "pooling")
ROW_ID = "__torchrec_ple_row__"
FeatureRefs = Union[str, Sequence[str], "FeatureService"]
PathLike = Union[str, Path]


class FeastOfflineStoreWarning(UserWarning):
    """An offline store setting known to change training rows silently."""


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
        return (emb.get("table") if isinstance(emb, dict) else None) or f.get("name")

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
        if column not in tags or not sparse:
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


# ---------------------------------------------------------------------------- checks


def check_offline_store(store: FeatureStore) -> List[str]:
    """Warn (:class:`FeastOfflineStoreWarning`) about the ``file`` offline store.

    Returns:
        List[str]: the messages warned.
    """
    offline = getattr(store.config, "offline_store", None)
    kind = getattr(offline, "type", None) or "file"
    messages: List[str] = []
    if str(kind).lower() in ("file", "dask"):  # both name Feast's DaskOfflineStore
        messages.append(
            "Feast 'file' offline store: it silently drops entity rows sharing an entity key "
            "and event timestamp (Feast issue 6787) and rows without a feature row inside "
            "the TTL, and turns integer features holding nulls into floats; set "
            "offline_store: {type: duckdb} in feature_store.yaml"
        )
    for m in messages:
        warnings.warn(m, FeastOfflineStoreWarning, stacklevel=2)
    return messages


def check_sources(store: FeatureStore, refs: FeatureRefs) -> None:
    """Refuse ``FileSource`` paths that are relative local paths.

    DuckDB resolves them against the working directory (not the repo), so the same repo
    reads different files from different folders. Use absolute paths or URIs.
    """
    feast = _feast()
    for view_name in dict.fromkeys(v for v, _ in feature_refs(store, refs)):
        view = _view(store, view_name)
        source = getattr(view, "batch_source", None)
        if not isinstance(source, feast.FileSource):
            continue
        path = source.path
        if "://" in path or Path(path).is_absolute():
            continue
        raise DataError(
            file=path,
            expected=f"an absolute path or URI in the FileSource of feature view '{view_name}'",
            found="a relative path",
            hint="DuckDB reads it relative to the working directory, not the feature repo",
        )


# ---------------------------------------------------------------------------- offline


def read_entity_df(path: PathLike, timestamp_column: str = "event_timestamp") -> pd.DataFrame:
    """An entity dataframe from Parquet or CSV: entity keys, event timestamps, labels.

    Timestamps become timezone-aware (UTC; naive values are taken as UTC).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(file=str(path), expected="an entity dataframe file", found="nothing")
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        import pyarrow.dataset as ds

        frame = ds.dataset(str(path), format="parquet").to_table().to_pandas()
    else:
        frame = pd.read_csv(path)
    if timestamp_column not in frame.columns:
        raise DataError(
            file=str(path),
            column=timestamp_column,
            expected=f"an event timestamp column '{timestamp_column}'",
            found=f"columns {list(frame.columns)[:20]}",
        )
    frame[timestamp_column] = pd.to_datetime(frame[timestamp_column], utc=True)
    return frame


def historical_table(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    features: FeatureRefs,
    full_feature_names: bool = False,
) -> pa.Table:
    """Point-in-time features of every entity row, in ``entity_df``'s row order.

    ``get_historical_features(...).to_arrow()``; the entity dataframe's columns (keys,
    timestamps, labels) are kept. Entity rows the offline store drops are reported with a
    :class:`FeastOfflineStoreWarning`.

    Returns:
        pa.Table: entity columns then feature columns.
    """
    check_offline_store(store)
    check_sources(store, features)
    if ROW_ID in entity_df.columns:
        raise DataError(column=ROW_ID, expected="no column of this reserved name", found="one")
    frame = entity_df.copy()
    frame[ROW_ID] = np.arange(len(frame), dtype=np.int64)
    job = store.get_historical_features(
        entity_df=frame, features=_resolve(store, features), full_feature_names=full_feature_names
    )
    table = job.to_arrow()
    table = table.take(pc.sort_indices(table.column(ROW_ID)))
    if table.num_rows != len(frame):
        warnings.warn(
            f"the Feast offline store returned {table.num_rows} rows for {len(frame)} entity rows",
            FeastOfflineStoreWarning,
            stacklevel=2,
        )
    names = [c for c in entity_df.columns if c in table.column_names]
    names += [c for c in table.column_names if c not in names and c != ROW_ID]
    return table.select(names)


def fill_nulls(table: pa.Table, fill: Mapping[str, Any]) -> pa.Table:
    """``table`` with the nulls of the ``fill`` columns replaced (e.g. a reserved id 0).

    Identity-mapped ids (``num_embeddings``) must be present on every row, while a
    point-in-time join leaves them null where no feature row is inside the TTL.
    """
    for col, value in fill.items():
        if col not in table.column_names:
            raise DataError(column=col, expected="a retrieved column to fill", found="none")
        arr = table.column(col)
        table = table.set_column(
            table.column_names.index(col), col, arr.fill_null(pa.scalar(value, arr.type))
        )
    return table


def load_feast_tables(
    repo: Union[PathLike, FeatureStore],
    features: FeatureRefs,
    entity_df_path: PathLike,
    validation_entity_df_path: Optional[PathLike] = None,
    validation_fraction: float = 0.1,
    split: str = "random",
    timestamp_column: str = "event_timestamp",
    full_feature_names: bool = False,
    fill: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
) -> Tuple[pa.Table, pa.Table]:
    """(train, validation) tables of point-in-time Feast features joined to entity rows.

    Args:
        repo (Union[PathLike, FeatureStore]): the feature repo folder (with
            ``feature_store.yaml``), or an open store.
        features (FeatureRefs): a feature service name or object, or ``view:feature`` refs.
        entity_df_path (PathLike): Parquet/CSV entity rows: join keys, ``timestamp_column``,
            labels (and any other columns, kept).
        validation_entity_df_path (Optional[PathLike]): validation entity rows; else a
            ``validation_fraction`` of the training rows is held out.
        validation_fraction (float): held-out fraction. Default: 0.1.
        split (str): ``random`` (seeded) or ``time`` (the latest rows by timestamp).
            Default: random.
        timestamp_column (str): event timestamp column. Default: ``event_timestamp``.
        full_feature_names (bool): name columns ``view__feature``. Default: False.
        fill (Optional[Mapping[str, Any]]): values for nulls per column (see
            :func:`fill_nulls`).
        seed (int): random split seed. Default: 0.

    Returns:
        Tuple[pa.Table, pa.Table]: rows in entity-dataframe order.
    """
    if split not in ("random", "time"):
        raise DataError(expected="split 'random' or 'time'", found=repr(split))
    store = repo if hasattr(repo, "get_historical_features") else open_store(repo)  # type: ignore[arg-type]

    def load(path: PathLike) -> pa.Table:
        frame = read_entity_df(path, timestamp_column)
        table = historical_table(store, frame, features, full_feature_names)
        return fill_nulls(table, fill) if fill else table

    train = load(entity_df_path)
    if validation_entity_df_path is not None:
        return train, load(validation_entity_df_path)
    if validation_fraction <= 0:
        return train, train.slice(0, 0)
    n_valid = int(round(validation_fraction * train.num_rows))
    if split == "time":
        order = np.asarray(pc.sort_indices(train.column(timestamp_column)), dtype=np.int64)
        train_rows, valid_rows = (
            order[: train.num_rows - n_valid],
            order[train.num_rows - n_valid :],
        )
    else:
        perm = np.random.default_rng(seed).permutation(train.num_rows)
        train_rows, valid_rows = perm[n_valid:], perm[:n_valid]
    return train.take(np.sort(train_rows)), train.take(np.sort(valid_rows))


def load_spec_tables(spec: Any) -> Tuple[pa.Table, pa.Table]:
    """``load_tables`` for ``data.source: feast`` (reads ``spec.data.feast``; see the module doc)."""
    f = spec.data.feast
    features = f.feature_service if f.feature_service is not None else list(f.features)
    return load_feast_tables(
        f.repo_path,
        features,
        f.entity_df,
        validation_entity_df_path=f.validation_entity_df,
        validation_fraction=spec.data.validation_fraction,
        split=f.split,
        timestamp_column=f.timestamp_column,
        full_feature_names=f.full_feature_names,
        fill=f.fill,
        seed=spec.train.seed,
    )


# ---------------------------------------------------------------------------- online


def _arrow_types(
    store: FeatureStore, features: FeatureRefs, full_feature_names: bool
) -> Dict[str, pa.DataType]:
    from feast.type_map import feast_value_type_to_pa

    out: Dict[str, pa.DataType] = {}
    for view_name, feature in feature_refs(store, features):
        view = _view(store, view_name)
        for field in view.features:
            if field.name == feature:
                try:
                    out[_column_name(view_name, feature, full_feature_names)] = (
                        feast_value_type_to_pa(field.dtype.to_value_type())
                    )
                except (KeyError, AttributeError, NotImplementedError):
                    pass
    return out


def online_table(
    store: FeatureStore,
    features: FeatureRefs,
    entity_rows: Union[
        pa.Table, pd.DataFrame, Mapping[str, Sequence[Any]], Sequence[Mapping[str, Any]]
    ],
    full_feature_names: bool = False,
) -> pa.Table:
    """Online features of entity rows as an Arrow table, in ``entity_rows`` order.

    ``get_online_features(...).to_dict()`` typed with the feature views' schemas (so
    all-null columns keep their type), ready for ``FeatureTransforms.encode``.

    Args:
        store (FeatureStore): the store (materialized with ``materialize(start, end)``).
        features (FeatureRefs): a feature service name or object, or ``view:feature`` refs.
        entity_rows: join-key values: a table, a dataframe, ``{key: values}`` or a list
            of ``{key: value}`` rows.
        full_feature_names (bool): name columns ``view__feature``. Default: False.

    Returns:
        pa.Table: join keys then feature columns, one row per entity row.
    """
    if isinstance(entity_rows, pa.Table):
        rows: Any = entity_rows.to_pylist()
    elif hasattr(entity_rows, "to_dict") and hasattr(entity_rows, "columns"):
        rows = entity_rows.to_dict(orient="records")  # type: ignore[call-arg]
    else:
        rows = entity_rows
    response = store.get_online_features(
        features=_resolve(store, features), entity_rows=rows, full_feature_names=full_feature_names
    )
    data = response.to_dict()
    types = _arrow_types(store, features, full_feature_names)
    columns = {}
    for name, values in data.items():
        t = types.get(name)
        try:
            columns[name] = pa.array(values, type=t) if t is not None else pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array(values)
    return pa.table(columns)
