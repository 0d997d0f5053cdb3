"""The online store side of ``torchrec-ple serve``: entity keys -> a model's raw feature rows.

Which Feast features a model reads is decided once per loaded model (registry lookups
are slow: ~5 ms each), in this order: ``serve --feature-service``; the saved spec's
``data.feast`` (``feature_service`` or ``features``); else, for every feature column of
the model, the one feature view holding a feature of that name. Each request then costs
one ``get_online_features`` call (:func:`~torchrec_ple.data.feast.online_table`, typed
with the column types read at load).

Feast is imported only by these functions (through :mod:`torchrec_ple.data.feast`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import Spec

if TYPE_CHECKING:  # pragma: no cover
    from feast import FeatureStore

# What a join key's JSON value must be, from its Feast value type.
_INT_TYPES = ("INT32", "INT64", "UNIX_TIMESTAMP")
_STR_TYPES = ("STRING",)


class FeastReader:
    """Reads one model's feature columns for entity rows from the Feast online store.

    Args:
        store (FeatureStore): the feature store (its online store materialized).
        features (Any): a FeatureService object or ``view:feature`` refs (resolved once).
        columns (Sequence[str]): the model's raw feature columns; each must be retrieved.
        fill (Mapping[str, Any]): values for nulls per column (e.g. the reserved id of
            an identity-mapped feature, for unknown entities). Default: none.
        full_feature_names (bool): retrieved columns are ``view__feature``. Default: False.

    Example::

        reader = FeastReader(store, store.get_feature_service("user_service"), ["age"])
        table, unknown, filled = reader.read([{"user": 1}, {"user": 2}])
    """

    def __init__(
        self,
        store: FeatureStore,
        features: Any,
        columns: Sequence[str],
        fill: Optional[Mapping[str, Any]] = None,
        full_feature_names: bool = False,
    ) -> None:
        from torchrec_ple.data.feast import feature_refs, online_column_types

        self._store = store
        self._features = features
        self._full = full_feature_names
        self._columns = list(columns)
        self._refs = feature_refs(store, features)
        self._types = online_column_types(store, features, full_feature_names)
        missing = [c for c in self._columns if c not in self._types]
        if missing:
            raise DataError(
                column=missing[0],
                expected=f"the model's feature column '{missing[0]}' among the Feast "
                f"features read ({self.describe_features()})",
                found=f"columns {sorted(self._types)}",
            )
        self._fill = dict(fill or {})
        unknown_fill = [c for c in self._fill if c not in self._columns]
        if unknown_fill:
            raise DataError(
                column=unknown_fill[0],
                expected=f"a --fill column among the model's feature columns {self._columns}",
                found=f"'{unknown_fill[0]}'",
            )
        self._join_keys = _join_keys(store, features, self._refs)

    @property
    def columns(self) -> List[str]:
        """The model's feature columns this reader returns."""
        return list(self._columns)

    @property
    def fill(self) -> Dict[str, Any]:
        """Values for store nulls, per column."""
        return dict(self._fill)

    @property
    def join_keys(self) -> Dict[str, str]:
        """``{join key: "int" | "str" | "any"}``: what an entity row must hold."""
        return dict(self._join_keys)

    def describe_features(self) -> str:
        if hasattr(self._features, "feature_view_projections"):
            return f"feature service '{self._features.name}'"
        return f"features {list(self._features)}"

    def describe(self) -> Dict[str, Any]:
        """What ``GET /metadata`` shows of the store side."""
        return {
            "project": getattr(self._store, "project", None),
            "features": self.describe_features(),
            "refs": [f"{v}:{f}" for v, f in self._refs],
            "entity_keys": self.join_keys,
            "fill": self._fill,
        }

    def read(self, rows: Sequence[Mapping[str, Any]]) -> Tuple[pa.Table, int, Dict[str, int]]:
        """The feature columns of entity rows, in row order.

        Returns:
            Tuple[pa.Table, int, Dict[str, int]]: the rows (join keys, then the feature
            columns, nulls filled); how many rows had no feature value at all (unknown
            entities, or none inside the TTL); how many nulls each fill replaced.
        """
        from torchrec_ple.data.feast import fill_nulls, online_table

        table = online_table(self._store, self._features, rows, self._full, types=self._types)
        unknown = _all_null_rows(table, self._columns)
        filled = {c: table.column(c).null_count for c in self._fill}
        if self._fill:
            table = fill_nulls(table, self._fill)
        return table, unknown, {c: n for c, n in filled.items() if n}


def _all_null_rows(table: pa.Table, columns: Sequence[str]) -> int:
    if not columns or table.num_rows == 0:
        return 0
    mask = None
    for c in columns:
        nulls = pc.is_null(table.column(c))
        mask = nulls if mask is None else pc.and_(mask, nulls)
    return int(pc.sum(mask).as_py() or 0)


def _join_keys(store: FeatureStore, features: Any, refs: List[Tuple[str, str]]) -> Dict[str, str]:
    from torchrec_ple.data.feast import _view

    renames: Dict[str, Dict[str, str]] = {}
    for proj in getattr(features, "feature_view_projections", []):
        renames[proj.name] = dict(getattr(proj, "join_key_map", None) or {})
    keys: Dict[str, str] = {}
    for view_name in dict.fromkeys(v for v, _ in refs):
        view = _view(store, view_name)
        for col in getattr(view, "entity_columns", []):
            name = renames.get(view_name, {}).get(col.name, col.name)
            keys[name] = _value_kind(col)
    return keys


def _value_kind(field: Any) -> str:
    try:
        name = field.dtype.to_value_type().name
    except (AttributeError, ValueError, NotImplementedError):
        return "any"
    if name in _INT_TYPES:
        return "int"
    return "str" if name in _STR_TYPES else "any"


def feast_reader_factory(
    store: FeatureStore,
    feature_service: Optional[str] = None,
    fill: Optional[Mapping[str, Any]] = None,
) -> Callable[[Spec], FeastReader]:
    """A function building the :class:`FeastReader` of a loaded model's spec.

    Args:
        store (FeatureStore): the feature store.
        feature_service (Optional[str]): the feature service to read (``--feature-service``);
            None: the spec's ``data.feast`` features, else the feature views holding the
            model's columns by name.
        fill (Optional[Mapping[str, Any]]): values for nulls (``--fill``), over the spec's
            ``data.feast.fill``.
    """

    def build(spec: Spec) -> FeastReader:
        from torchrec_ple.data.feast import _resolve
        from torchrec_ple.serving.predict import feature_columns

        columns = feature_columns(spec)
        saved = spec.data.feast
        fills: Dict[str, Any] = dict(saved.fill) if saved is not None else {}
        fills.update(fill or {})
        full = bool(saved.full_feature_names) if saved is not None else False
        if feature_service is not None:
            features: Any = _resolve(store, feature_service)
        elif saved is not None:
            wanted = saved.feature_service or list(saved.features or [])
            features = _resolve(store, wanted)
        else:
            features = discover_features(store, columns)
        return FeastReader(store, features, columns, fills, full)

    return build


def discover_features(store: FeatureStore, columns: Sequence[str]) -> List[str]:
    """``view:feature`` refs of the feature views holding each column by name.

    Raises:
        DataError: a column no feature view holds, or several do.
    """
    views = list(store.list_feature_views())
    refs = []
    for c in columns:
        holders = [v.name for v in views if any(f.name == c for f in v.features)]
        if len(holders) != 1:
            raise DataError(
                column=c,
                expected=f"one Feast feature view with a feature '{c}' (or pass --feature-service)",
                found=f"{len(holders)} ({holders})" if holders else "none",
            )
        refs.append(f"{holders[0]}:{c}")
    return refs
