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

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.feast_tags import (  # noqa: F401  (re-exported)
    FEAST_TAGS,
    FeatureRefs,
    PathLike,
    _column_name,
    _feast,
    _resolve,
    _view,
    feature_refs,
    feature_tags,
    merge_feature_tags,
    open_store,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from feast import FeatureStore

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
    "online_column_types",
    "online_table",
    "open_store",
    "read_entity_df",
]

ROW_ID = "__torchrec_ple_row__"


class FeastOfflineStoreWarning(UserWarning):
    """An offline store setting known to change training rows silently."""


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
        return entity_table(store, path, features, timestamp_column, full_feature_names, fill)

    train = load(entity_df_path)
    if validation_entity_df_path is not None:
        return train, load(validation_entity_df_path)
    if validation_fraction <= 0:
        return train, train.slice(0, 0)
    train_rows, valid_rows = holdout_rows(train, validation_fraction, split, timestamp_column, seed)
    return train.take(train_rows), train.take(valid_rows)


def entity_table(
    store: FeatureStore,
    path: PathLike,
    features: FeatureRefs,
    timestamp_column: str = "event_timestamp",
    full_feature_names: bool = False,
    fill: Optional[Mapping[str, Any]] = None,
    rows: Optional[Tuple[int, int]] = None,
) -> pa.Table:
    """The point-in-time rows of one entity dataframe file (rows ``[start, stop)`` of it
    when ``rows`` is given), nulls of the ``fill`` columns filled."""
    frame = read_entity_df(path, timestamp_column)
    if rows is not None:
        frame = frame.iloc[rows[0] : rows[1]].reset_index(drop=True)
    table = historical_table(store, frame, features, full_feature_names)
    return fill_nulls(table, fill) if fill else table


def holdout_rows(
    table: pa.Table, fraction: float, split: str, timestamp_column: str, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of an entity table, each sorted: ``fraction`` of
    the rows held out at random (seeded) or the latest by ``timestamp_column``."""
    n_valid = int(round(fraction * table.num_rows))
    if split == "time":
        order = np.asarray(pc.sort_indices(table.column(timestamp_column)), dtype=np.int64)
        train_rows, valid_rows = (
            order[: table.num_rows - n_valid],
            order[table.num_rows - n_valid :],
        )
    else:
        perm = np.random.default_rng(seed).permutation(table.num_rows)
        train_rows, valid_rows = perm[n_valid:], perm[:n_valid]
    return np.sort(train_rows), np.sort(valid_rows)


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


def online_column_types(
    store: FeatureStore, features: FeatureRefs, full_feature_names: bool = False
) -> Dict[str, pa.DataType]:
    """Arrow types of the retrieved feature columns, from the feature views' schemas.

    Reads the registry: a server computes them once and passes them to
    :func:`online_table` (``types``) on every read.
    """
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
    types: Optional[Mapping[str, pa.DataType]] = None,
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
        types (Optional[Mapping[str, pa.DataType]]): column types
            (:func:`online_column_types`); None reads them from the registry.

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
    if types is None:
        types = online_column_types(store, features, full_feature_names)
    columns = {}
    for name, values in data.items():
        t = types.get(name)
        try:
            columns[name] = pa.array(values, type=t) if t is not None else pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array(values)
    return pa.table(columns)
