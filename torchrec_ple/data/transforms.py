"""Raw columns to ids, floats, labels and sample-space masks.

Transforms are fitted once on the training table (:meth:`FeatureTransforms.fit`), saved
as plain JSON next to the model, and re-applied unchanged at evaluation and prediction.
Everything is vectorized over Arrow/numpy arrays: there is no per-row Python loop.

Id conventions (per embedding table):

* vocabulary: row 0 is out-of-vocabulary (rare, unseen or missing values); the fitted
  values take rows ``1..V`` by decreasing frequency;
* hashing: row 0 is missing; a value goes to ``1 + hash(value) % hash_buckets``;
* identity: values are ids in ``[0, num_embeddings)`` already;
* numeric buckets: row 0 is missing; bucket ``i`` (``searchsorted`` right) is row ``i+1``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.atomic import write_text_atomic
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FeatureSpec, Spec, TaskSpec

FORMAT_VERSION = 1
# Values kept per quantile-bucketed feature by a streaming fit (8 MB of float64 each).
DEFAULT_RESERVOIR = 1_000_000


@dataclass
class TableInfo:
    """An embedding table as fitted: what ``EmbeddingBagConfig`` needs.

    Args:
        name (str): table name.
        dim (int): embedding dimension.
        num_embeddings (int): rows.
        pooling (str): ``sum`` or ``mean``.
        features (List[str]): feature names looking it up.
        sharding (str): sharding hint.
        compute_kernel (str): fbgemm kernel hint (``auto``, ``fused``, ``fused_uvm``,
            ``fused_uvm_caching``). Default: ``auto``.
        cache_load_factor (Optional[float]): GPU cache share of ``fused_uvm_caching``.
    """

    name: str
    dim: int
    num_embeddings: int
    pooling: str
    features: List[str]
    sharding: str = "auto"
    compute_kernel: str = "auto"
    cache_load_factor: Optional[float] = None

    @property
    def config_name(self) -> str:
        """The TorchRec table name: prefixed, since a bare name such as ``items`` or
        ``keys`` would clash with ``nn.ModuleDict`` attributes inside the collection."""
        return f"t_{self.name}"


@dataclass
class EncodedData:
    """A table encoded into model-ready arrays (N rows, K tasks, D dense columns).

    Args:
        keys (List[str]): sparse feature names, in KeyedJaggedTensor key order.
        values (List[np.ndarray]): int64 ids per key, all rows' ids back to back.
        offsets (List[Optional[np.ndarray]]): int64 (N + 1,) row offsets per key;
            ``None`` when every row has exactly one id (``values`` is then (N,)).
        dense (np.ndarray): float32 (N, D).
        labels (np.ndarray): float32 (N, K); 0 where a label is missing.
        masks (np.ndarray): float32 (N, K); 1 where the row is in the task's sample space.
        report (Dict[str, Any]): counts of rows changed while encoding.
    """

    keys: List[str]
    values: List[np.ndarray]
    offsets: List[Optional[np.ndarray]]
    dense: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    report: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------------- helpers


def gather_jagged(
    values: np.ndarray, offsets: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the bags ``rows`` of a jagged array, without a Python loop."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0], lengths
    # Position of each output value: its bag's start plus its index inside the bag.
    out_starts = np.cumsum(lengths) - lengths
    pos = np.repeat(starts - out_starts, lengths) + np.arange(total)
    return values[pos], lengths


def take_encoded(data: EncodedData, rows: np.ndarray) -> EncodedData:
    """The ``rows`` (int64 indices) of encoded data, as new encoded data (no report)."""
    values, offsets = [], []
    for v, o in zip(data.values, data.offsets):
        if o is None:
            values.append(v[rows])
            offsets.append(None)
        else:
            taken, lengths = gather_jagged(v, o, rows)
            new = np.zeros(len(rows) + 1, np.int64)
            np.cumsum(lengths, out=new[1:])
            values.append(taken)
            offsets.append(new)
    return EncodedData(
        keys=data.keys,
        values=values,
        offsets=offsets,
        dense=data.dense[rows],
        labels=data.labels[rows],
        masks=data.masks[rows],
    )


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _as_numeric(arr: pa.Array, where: str) -> np.ndarray:
    """Float64 numpy view of a numeric/bool column, NaN where missing."""
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.int8())
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        if pa.types.is_null(arr.type):
            return np.full(len(arr), np.nan)
        # Strings that all parse as numbers are accepted (CSV columns read as text).
        try:
            arr = pc.cast(arr, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _first_unparsable(arr)
            raise DataError(
                column=where, expected="numbers", found=f"{arr.type} values such as {bad!r}"
            ) from None
    return arr.to_numpy(zero_copy_only=False).astype(np.float64)


# The largest float32: a numeric value beyond it becomes inf in the model's input.
_F32_MAX = float(np.finfo(np.float32).max)


def _finite32(x: np.ndarray) -> np.ndarray:
    """Where ``x`` is finite and fits in float32 (1e308 is finite in float64 but inf in
    the model, and its square overflows the fitted statistics)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (np.abs(x) <= _F32_MAX)


def _first_unparsable(arr: pa.Array) -> Any:
    for v in arr.to_pylist()[:10000]:
        try:
            float(v)
        except (TypeError, ValueError):
            if v is not None:
                return v
    return None


def _non_finite_as_null(arr: pa.Array) -> pa.Array:
    """A float array with NaN and +-inf made null: numpy- or Spark-written Parquet keeps
    NaN for a missing id, which is no id (cast to int64 it would become -2**63)."""
    bad = pc.invert(pc.is_finite(arr)).fill_null(False)
    if not pc.any(bad).as_py():
        return arr
    return pc.if_else(bad, pa.scalar(None, arr.type), arr)


def _normalize_ids(arr: pa.Array) -> pa.Array:
    """Canonical key type for vocabularies: int64 for integral columns, else string.

    Non-finite floats (NaN, +-inf) become null: missing, like the nulls beside them.
    """
    if arr.type == pa.uint64():
        # ids past int64 (e.g. 64-bit hashes) keep their identity as the int64 of the same
        # bits; a cast would refuse them
        if isinstance(arr, pa.ChunkedArray):
            return pa.chunked_array([c.view(pa.int64()) for c in arr.chunks], pa.int64())
        return arr.view(pa.int64())
    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        return arr.cast(pa.int64())
    if pa.types.is_floating(arr.type):
        arr = _non_finite_as_null(arr)
        np_arr = arr.to_numpy(zero_copy_only=False)
        finite = np_arr[~np.isnan(np_arr)]
        # Integer ids read with missing values become floats in pandas/CSV: undo that.
        if np.all(finite == np.round(finite)):
            return pc.cast(arr, pa.int64(), safe=False)
        return pc.cast(arr, pa.string())
    if pa.types.is_dictionary(arr.type):
        return arr.dictionary_decode().cast(pa.string())
    return arr.cast(pa.string())


def _flatten(arr: pa.Array, feature: FeatureSpec) -> Tuple[pa.Array, Optional[np.ndarray]]:
    """(flat values, offsets or None) of a categorical or sequence column."""
    if feature.type != "sequence":
        return arr, None
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        if feature.separator is None:
            raise DataError(
                column=feature.column,
                expected="a list column, or a 'separator' to split strings on",
                found=f"{arr.type} values",
            )
        arr = pc.split_pattern(arr, pattern=feature.separator)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise DataError(column=feature.column, expected="a list column", found=str(arr.type))
    arr = arr.fill_null(pa.scalar([], type=arr.type))
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten()
    if offsets[0] != 0:  # a sliced array: rebase offsets onto the flattened values
        offsets = offsets - offsets[0]
    if feature.max_len is not None:
        values, offsets = _truncate(values, offsets, feature.max_len)
    return values, offsets


def _truncate(values: pa.Array, offsets: np.ndarray, max_len: int) -> Tuple[pa.Array, np.ndarray]:
    # Keep the LAST max_len items of each list: logs append the most recent at the end.
    lengths = np.diff(offsets)
    if lengths.size == 0 or lengths.max(initial=0) <= max_len:
        return values, offsets
    new_len = np.minimum(lengths, max_len)
    new_offsets = np.zeros_like(offsets)
    np.cumsum(new_len, out=new_offsets[1:])
    starts = offsets[1:] - new_len
    pos = np.repeat(starts - new_offsets[:-1], new_len) + np.arange(new_offsets[-1])
    return values.take(pa.array(pos)), new_offsets


def _hash(values: pa.Array, buckets: int) -> np.ndarray:
    keys = _normalize_ids(values)
    valid = np.asarray(keys.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    fill = (
        pa.scalar(0, pa.int64()) if pa.types.is_integer(keys.type) else pa.scalar("", pa.string())
    )
    np_vals = keys.fill_null(fill).to_numpy(zero_copy_only=False)
    out = np.zeros(len(np_vals), dtype=np.int64)
    if valid.any():
        # pandas' hash_array is vectorized and seeded with a fixed key: stable across runs.
        # Imported here: a Parquet run without hashed features never loads pandas (~40 MB).
        import pandas as pd

        h = pd.util.hash_array(np_vals[valid])
        out[valid] = (h % np.uint64(buckets)).astype(np.int64) + 1
    return out


# ---------------------------------------------------------------------------- transforms


class FeatureTransforms:
    """Fitted transforms of a spec: vocabularies, normalizer statistics, bucket edges.

    Args:
        spec (Spec): the spec the transforms belong to.
        state (Dict[str, Any]): fitted statistics (JSON-serializable).

    Example::

        transforms = FeatureTransforms.fit(spec, train_table)
        train = transforms.encode(train_table)
        transforms.save("out/transforms.json")
    """

    def __init__(self, spec: Spec, state: Dict[str, Any]) -> None:
        self._spec = spec
        self._state = state

    # -- fitting
    @classmethod
    def fit(cls, spec: Spec, table: pa.Table) -> FeatureTransforms:
        """Fit every transform on the training ``table`` (``fit_streaming([table])``)."""
        return cls.fit_streaming(spec, [table])

    @classmethod
    def fit_streaming(
        cls,
        spec: Spec,
        tables: Iterable[pa.Table],
        reservoir_size: int = DEFAULT_RESERVOIR,
        seed: int = 0,
    ) -> FeatureTransforms:
        """Fit every transform in one pass over chunks of the training data.

        Vocabulary counts, numeric fill values, mean/std/min/max are exact: the state
        equals :meth:`fit` on the concatenated chunks (moments up to float64 rounding).
        Quantile bucket edges (``buckets.num_buckets``) are exact while a feature has at
        most ``reservoir_size`` finite values; beyond that they are the quantiles of a
        uniform random sample (a reservoir) of that many values.

        Args:
            spec (Spec): the spec.
            tables (Iterable[pa.Table]): chunks of training rows holding at least the
                columns :func:`fit_columns` names; consumed once.
            reservoir_size (int): values kept per quantile-bucketed feature. Default: 1M.
            seed (int): seed of the reservoir sample. Default: 0.

        Returns:
            FeatureTransforms: the fitted transforms.
        """
        acc = _FitAccumulator(spec, reservoir_size, seed)
        for table in tables:
            acc.update(table)
        return cls(spec, acc.state())

    # -- persistence
    def save(self, path: str | Path) -> None:
        """Write the fitted state as JSON (atomically: temp file then rename)."""
        write_text_atomic(Path(path), json.dumps(self._state))

    @classmethod
    def load(cls, spec: Spec, path: str | Path) -> FeatureTransforms:
        """Read transforms saved by :meth:`save` (plain JSON: nothing is unpickled)."""
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(
                file=str(path), expected="a transforms JSON file", found=str(e)
            ) from None
        if state.get("version") != FORMAT_VERSION:
            raise DataError(
                file=str(path),
                expected=f"transforms version {FORMAT_VERSION}",
                found=str(state.get("version")),
            )
        return cls(spec, state)

    @property
    def state(self) -> Dict[str, Any]:
        return self._state

    # -- shapes the model needs
    def num_embeddings(self, feature: FeatureSpec) -> int:
        """Rows of the table a sparse feature looks up."""
        if feature.num_embeddings is not None:
            return feature.num_embeddings
        if feature.hash_buckets is not None:
            return feature.hash_buckets + 1
        if feature.buckets is not None:
            return len(self._state["buckets"][feature.name]) + 2
        return len(self._state["vocabs"][self._spec.table_of(feature)]["values"]) + 1

    def tables(self) -> List[TableInfo]:
        """One entry per embedding table, features in spec order."""
        out: Dict[str, TableInfo] = {}
        for f in self._spec.sparse_features:
            name = self._spec.table_of(f)
            n = self.num_embeddings(f)
            if name in out:
                out[name].features.append(f.name)
                out[name].num_embeddings = max(out[name].num_embeddings, n)
            else:
                assert f.embedding.dim is not None
                out[name] = TableInfo(
                    name=name,
                    dim=f.embedding.dim,
                    num_embeddings=n,
                    pooling=f.embedding.pooling or "sum",
                    features=[f.name],
                    sharding=f.embedding.sharding,
                    compute_kernel=f.embedding.compute_kernel,
                    cache_load_factor=f.embedding.cache_load_factor,
                )
        return list(out.values())

    @property
    def dense_dim(self) -> int:
        return len(self._spec.dense_features)

    # -- encoding
    def encode(self, table: pa.Table, dropped: str = "remove") -> EncodedData:
        """Encode a raw table (train, validation or new data) with the fitted state.

        Bad cells follow the features' and tasks' policies (``on_missing``,
        ``on_out_of_range``, ``on_empty``, ``clip``, ``on_invalid``); every changed or
        dropped row is counted in ``report``.

        Args:
            table (pa.Table): raw rows.
            dropped (str): what becomes of the rows a ``drop`` policy rejects:
                ``remove`` (default); ``mask``: they stay, encoded with a valid fallback
                (fill value, row 0, clipped id), outside every task's sample space (all
                masks 0), so streaming keeps its planned batch count, and the table is
                taken as one chunk of a whole: no ``max_dropped_fraction`` check here,
                the caller runs :func:`check_dropped` on the merged reports; ``keep``:
                the fallback encoding, masks untouched and no ``max_dropped_fraction``
                check (prediction: one output per input row).

        Returns:
            EncodedData: the model-ready arrays and the report.

        Raises:
            DataError: a cell an ``error`` policy rejects, or (``remove``) more dropped
                rows than ``data.max_dropped_fraction``.
        """
        n = table.num_rows
        report: Dict[str, Any] = {"rows": n, "features": {}, "tasks": {}}
        rejected: Dict[str, np.ndarray] = {}  # reason -> rows a drop policy rejects
        keys: List[str] = []
        values: List[np.ndarray] = []
        offsets: List[Optional[np.ndarray]] = []
        for f in self._spec.sparse_features:
            ids, offs, rep, drop = self._encode_sparse(table, f)
            keys.append(f.name)
            values.append(ids)
            offsets.append(offs)
            report["features"][f.name] = rep
            rejected.update(drop)
        dense_cols = []
        for f in self._spec.dense_features:
            col, rep, drop = self._encode_numeric(table, f)
            dense_cols.append(col)
            report["features"][f.name] = rep
            rejected.update(drop)
        dense = (
            np.stack(dense_cols, axis=1).astype(np.float32)
            if dense_cols
            else np.zeros((n, 0), np.float32)
        )
        labels = np.zeros((n, len(self._spec.tasks)), np.float32)
        masks = np.zeros((n, len(self._spec.tasks)), np.float32)
        for k, t in enumerate(self._spec.tasks):
            y, m, rep = self._encode_label(table, t)
            labels[:, k] = y
            masks[:, k] = m
            report["tasks"][t.name] = rep
        data = EncodedData(keys, values, offsets, dense, labels, masks, report)
        bad = np.zeros(n, dtype=bool)
        for rows in rejected.values():
            bad |= rows
        n_bad = int(bad.sum())
        report["dropped_rows"] = n_bad
        report["dropped"] = {reason: int(rows.sum()) for reason, rows in rejected.items()}
        if n_bad == 0 or dropped == "keep":
            return data
        if dropped == "mask":
            # One chunk of a larger whole: its caller checks the limit on the whole's
            # counts (a 1-row tail chunk with one dropped row is not 100% dropped).
            data.masks[bad] = 0.0
            data.labels[bad] = 0.0
            self._count_sample_spaces(report, data.masks)
            return data
        check_dropped(report, self._spec.data.max_dropped_fraction, n)
        kept = take_encoded(data, np.flatnonzero(~bad))
        kept.report = report
        self._count_sample_spaces(report, kept.masks)
        return kept

    def _count_sample_spaces(self, report: Dict[str, Any], masks: np.ndarray) -> None:
        # After a drop: the dropped rows are in no task's sample space any more.
        for k, t in enumerate(self._spec.tasks):
            report["tasks"][t.name]["in_sample_space"] = int(masks[:, k].sum())

    def _encode_sparse(
        self, table: pa.Table, f: FeatureSpec
    ) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, int], Dict[str, np.ndarray]]:
        arr = _column(table, f.column)
        n = len(arr)
        rep: Dict[str, int] = {}
        drop: Dict[str, np.ndarray] = {}
        if f.buckets is not None:
            x = _as_numeric(arr, f.column)
            edges = np.asarray(self._state["buckets"][f.name], dtype=np.float64)
            ids = np.searchsorted(edges, x, side="right").astype(np.int64) + 1
            missing = ~np.isfinite(x)
            ids[missing] = 0
            rep["missing"] = int(missing.sum())
            self._missing_policy(f, missing, drop, "non-finite or missing values")
            return ids, None, rep, drop
        flat, offs = _flatten(arr, f)
        if offs is not None:
            lengths = np.diff(offs)
            empty = lengths == 0
            rep["empty_lists"] = int(empty.sum())
            if empty.any() and f.on_empty == "error":
                raise DataError(
                    column=f.column,
                    expected="non-empty lists (on_empty: error)",
                    found=f"{int(empty.sum())} empty or missing lists, e.g. row {_first(empty)}",
                )
            if f.on_empty == "drop":
                drop[f"{f.name}: empty"] = empty
        if f.num_embeddings is not None:
            ids, row_bad = self._identity_ids(flat, f, rep)
        elif f.hash_buckets is not None:
            ids = _hash(flat, f.hash_buckets)
            rep["missing"] = int((ids == 0).sum())
            row_bad = {"missing": ids == 0}
        else:
            vocab = self._state["vocabs"][self._spec.table_of(f)]
            key_type = pa.int64() if vocab["type"] == "int64" else pa.string()
            keys = _normalize_ids(flat)
            if keys.type != key_type:
                keys = keys.cast(pa.string())
                value_set = pa.array([str(v) for v in vocab["values"]], pa.string())
            else:
                value_set = pa.array(vocab["values"], key_type)
            idx = pc.index_in(keys, value_set=value_set).fill_null(-1)
            ids = idx.to_numpy(zero_copy_only=False).astype(np.int64) + 1
            missing = np.asarray(keys.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            rep["missing"] = int(missing.sum())
            rep["out_of_vocabulary"] = int((ids == 0).sum()) - rep["missing"]
            row_bad = {"missing": missing}
        for reason, bad_values in row_bad.items():
            rows = _rows_of(bad_values, offs, n)
            if reason == "missing":
                self._missing_policy(f, rows, drop, "missing values")
            else:
                drop[f"{f.name}: {reason}"] = rows
        if offs is not None and f.on_empty == "oov" and empty.any():
            ids, offs = _fill_empty(ids, offs, empty)
        return ids, offs, rep, drop

    def _missing_policy(
        self, f: FeatureSpec, rows: np.ndarray, drop: Dict[str, np.ndarray], what: str
    ) -> None:
        if not rows.any():
            return
        if f.on_missing == "error":
            raise DataError(
                column=f.column,
                expected=f"no {what} (features '{f.name}' on_missing: error)",
                found=f"{int(rows.sum())} rows with them, e.g. row {_first(rows)}",
            )
        if f.on_missing == "drop":
            drop[f"{f.name}: missing"] = rows

    def _identity_ids(
        self, flat: pa.Array, f: FeatureSpec, rep: Dict[str, int]
    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """Ids of an identity-mapped feature; bad ones replaced by a valid fallback."""
        n_emb = f.num_embeddings
        assert n_emb is not None
        x = _as_numeric(flat, f.column)
        missing = ~np.isfinite(x)
        rep["missing"] = int(missing.sum())
        if missing.any() and f.on_missing == "error":
            raise DataError(
                column=f.column,
                expected=f"ids in [0, {n_emb}) on every row (identity mapping; or set "
                f"on_missing: drop or fill)",
                found=f"{int(missing.sum())} missing values",
            )
        out = ~missing & ((x < 0) | (x >= n_emb) | (x != np.round(x)))
        rep["out_of_range"] = int(out.sum())
        if out.any() and f.on_out_of_range == "error":
            raise DataError(
                column=f.column,
                expected=f"integer ids in [0, {n_emb}) (identity mapping: num_embeddings; "
                f"or set on_out_of_range: clip, fill or drop)",
                found=f"{int(out.sum())} values outside, e.g. {x[out][0]:g}",
            )
        fill = int(f.fill) if f.fill is not None else 0
        ids = np.where(missing, fill, x)
        if f.on_out_of_range == "clip":
            ids = np.where(out, np.clip(np.round(x), 0, n_emb - 1), ids)
        else:
            ids = np.where(out, fill, ids)
        bad: Dict[str, np.ndarray] = {"missing": missing}
        if f.on_out_of_range == "drop":
            bad["out of range"] = out
        return ids.astype(np.int64), bad

    def _encode_numeric(
        self, table: pa.Table, f: FeatureSpec
    ) -> Tuple[np.ndarray, Dict[str, int], Dict[str, np.ndarray]]:
        x = _as_numeric(_column(table, f.column), f.column)
        st = self._state["numeric"][f.name]
        bad = ~_finite32(x)
        drop: Dict[str, np.ndarray] = {}
        self._missing_policy(f, bad, drop, "missing or non-finite values (beyond float32 included)")
        rep = {"missing_or_nonfinite_filled": int(bad.sum()) if f.on_missing == "fill" else 0}
        x = np.where(bad, st["fill"], x)
        if f.clip is not None:
            lo = -np.inf if f.clip.min is None else f.clip.min
            hi = np.inf if f.clip.max is None else f.clip.max
            clipped = ~bad & ((x < lo) | (x > hi))
            rep["clipped"] = int(clipped.sum())
            x = np.clip(x, lo, hi)
        if f.normalize == "standard":
            x = (x - st["mean"]) / (st["std"] if st["std"] > 0 else 1.0)
        elif f.normalize == "minmax":
            span = st["max"] - st["min"]
            x = (x - st["min"]) / (span if span > 0 else 1.0)
        elif f.normalize == "log":
            x = np.sign(x) * np.log1p(np.abs(x))
        # e.g. minmax of a value far outside the fitted range: the model's float32 input
        # would be inf, and the loss non-finite with no word of this column
        with np.errstate(invalid="ignore"):
            over = ~bad & ~_finite32(x)
        if over.any():
            self._missing_policy(f, over, drop, "values beyond float32 once normalized")
            x = np.where(over, self._normalized_fill(f, st), x)
            if f.on_missing == "fill":
                rep["missing_or_nonfinite_filled"] += int(over.sum())
        return x, rep, drop

    @staticmethod
    def _normalized_fill(f: FeatureSpec, st: Dict[str, float]) -> float:
        x = st["fill"]
        if f.clip is not None:
            lo = -np.inf if f.clip.min is None else f.clip.min
            hi = np.inf if f.clip.max is None else f.clip.max
            x = float(np.clip(x, lo, hi))
        if f.normalize == "standard":
            return (x - st["mean"]) / (st["std"] if st["std"] > 0 else 1.0)
        if f.normalize == "minmax":
            span = st["max"] - st["min"]
            return (x - st["min"]) / (span if span > 0 else 1.0)
        if f.normalize == "log":
            return float(np.sign(x) * np.log1p(np.abs(x)))
        return x

    def _encode_label(
        self, table: pa.Table, t: TaskSpec
    ) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
        arr = _column(table, t.label)
        present = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        invalid = np.zeros(len(arr), dtype=bool)
        if t.type == "binary" and t.positive is not None:
            keys = _normalize_ids(arr)
            # a NaN label in a float column is missing, not a negative
            present &= np.asarray(keys.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            pos = [p for p in t.positive]
            value_set = (
                pa.array([str(p) for p in pos])
                if pa.types.is_string(keys.type)
                else pa.array(pos).cast(keys.type)
            )
            y = np.asarray(
                pc.is_in(keys, value_set=value_set).to_numpy(zero_copy_only=False), dtype=np.float64
            )
        else:
            y = _as_numeric(arr, t.label)
            present &= _finite32(y)  # a label beyond float32 is inf in the loss: missing
            if t.type == "binary":
                invalid = present & (y != 0) & (y != 1)
                if invalid.any() and t.on_invalid == "error":
                    raise DataError(
                        column=t.label,
                        expected=f"binary labels in {{0, 1}} for task '{t.name}' (or set "
                        f"'positive: [...]', or on_invalid: drop)",
                        found=f"{int(invalid.sum())} other values, e.g. {y[invalid][0]:g}",
                    )
        in_space = present & ~invalid
        if t.sample_space is not None:
            in_space &= _condition(table, t)
        y = np.where(in_space, y, 0.0)
        rep = {"in_sample_space": int(in_space.sum()), "label_missing": int((~present).sum())}
        if t.on_invalid == "drop":
            rep["label_invalid_dropped"] = int(invalid.sum())
        return y.astype(np.float32), in_space.astype(np.float32), rep


def check_dropped(
    report: Dict[str, Any], limit: float, rows: int, file: Optional[str] = None
) -> None:
    """Raise :class:`DataError` when a report drops more than ``limit`` of ``rows``.

    Args:
        report (Dict[str, Any]): an encoding report, or several merged
            (:func:`merge_reports`): ``dropped_rows``, ``dropped`` per reason and
            ``rows`` (the rows it counted so far).
        limit (float): ``data.max_dropped_fraction``.
        rows (int): the rows the limit is a fraction of (the whole data, which may be
            more than the report has counted yet: drops only grow, so a report already
            over the limit of the whole is final).
        file (Optional[str]): the data, for the message.
    """
    n_bad = int(report.get("dropped_rows", 0))
    if n_bad <= limit * rows:
        return
    why = ", ".join(f"{r}: {c}" for r, c in report.get("dropped", {}).items() if c)
    read = int(report.get("rows", rows))
    so_far = f" in the first {read} read" if read < rows else ""
    raise DataError(
        file=file,
        expected=f"at most data.max_dropped_fraction={limit:g} of the rows dropped",
        found=f"{n_bad} of {rows} rows{so_far} ({why})",
        hint="a wrong column or a broken join? raise the limit if this is expected",
    )


def merge_reports(total: Dict[str, Any], part: Dict[str, Any]) -> Dict[str, Any]:
    """Sum two encoding reports (nested dicts of counts) into a new one."""
    out = dict(total)
    for k, v in part.items():
        if isinstance(v, dict):
            out[k] = merge_reports(out.get(k) or {}, v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + int(v)
        else:
            out[k] = v
    return out


def describe_report(report: Dict[str, Any]) -> List[str]:
    """What encoding changed or dropped, one short phrase per feature/task with counts."""
    out: List[str] = []
    if report.get("dropped_rows"):
        why = ", ".join(f"{r} {c}" for r, c in report.get("dropped", {}).items() if c)
        out.append(f"{report['dropped_rows']} rows dropped ({why})")
    names = {
        "missing_or_nonfinite_filled": "filled",
        "clipped": "clipped",
        "missing": "missing",
        "out_of_vocabulary": "out of vocabulary",
        "out_of_range": "out of range",
        "empty_lists": "empty lists",
        "label_missing": "labels missing",
        "label_invalid_dropped": "invalid labels dropped",
    }
    for group in ("features", "tasks"):
        for name, rep in report.get(group, {}).items():
            parts = [f"{rep[k]} {label}" for k, label in names.items() if rep.get(k)]
            if group == "tasks" and rep.get("in_sample_space") == 0 and report.get("rows"):
                parts.append("no row left in its sample space: its metrics are undefined")
            if parts:
                out.append(f"{name}: {', '.join(parts)}")
    return out


def _clip(x: np.ndarray, f: FeatureSpec) -> np.ndarray:
    """A numeric feature's finite values clipped into its ``clip`` range (NaN and +-inf
    are left as they are: they are missing, and take the fill value)."""
    if f.clip is None:
        return x
    lo = -np.inf if f.clip.min is None else f.clip.min
    hi = np.inf if f.clip.max is None else f.clip.max
    return np.where(np.isfinite(x), np.clip(x, lo, hi), x)


def _first(rows: np.ndarray) -> int:
    return int(np.flatnonzero(rows)[0])


def _rows_of(bad_values: np.ndarray, offsets: Optional[np.ndarray], n: int) -> np.ndarray:
    """Rows holding at least one bad value (``bad_values`` is per flat value)."""
    if offsets is None:
        return bad_values
    rows = np.zeros(n, dtype=bool)
    if bad_values.any():
        row_of_value = np.repeat(np.arange(n), np.diff(offsets))
        rows[row_of_value[bad_values]] = True
    return rows


def _fill_empty(
    ids: np.ndarray, offsets: np.ndarray, empty: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Put one id 0 (out of vocabulary / missing row) into every empty list."""
    lengths = np.diff(offsets)
    new_len = np.where(empty, 1, lengths)
    new_offsets = np.zeros_like(offsets)
    np.cumsum(new_len, out=new_offsets[1:])
    out = np.zeros(int(new_offsets[-1]), dtype=ids.dtype)
    keep = np.repeat(~empty, new_len)
    out[keep] = ids
    return out, new_offsets


def _condition(table: pa.Table, t: TaskSpec) -> np.ndarray:
    ss = t.sample_space
    assert ss is not None
    arr = _column(table, ss.column)
    if ss.not_null:
        mask = arr.is_valid()
        if pa.types.is_floating(arr.type):  # NaN is how numpy/Spark write a float null
            mask = pc.and_(mask, pc.invert(pc.is_nan(arr)))
    else:
        wanted = ss.in_ if ss.in_ is not None else [ss.equals]
        if (
            pa.types.is_integer(arr.type)
            or pa.types.is_floating(arr.type)
            or pa.types.is_boolean(arr.type)
        ):
            try:
                value_set = pa.array([float(v) for v in wanted])
            except (TypeError, ValueError):
                raise DataError(
                    column=ss.column,
                    expected=f"a value comparable with {arr.type} in tasks '{t.name}' sample_space",
                    found=repr(wanted),
                ) from None
            mask = pc.is_in(arr.cast(pa.float64()), value_set=value_set)
        else:
            mask = pc.is_in(arr.cast(pa.string()), value_set=pa.array([str(v) for v in wanted]))
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


# ---------------------------------------------------------------------------- fitting


def _vocab_features(spec: Spec) -> List[FeatureSpec]:
    """Sparse features whose ids go through a fitted vocabulary."""
    return [
        f
        for f in spec.features
        if f.is_sparse and f.buckets is None and f.hash_buckets is None and f.num_embeddings is None
    ]


def fit_columns(spec: Spec) -> List[str]:
    """The raw columns fitting reads: vocabulary features and numeric features.

    Hashed and identity ids, labels and sample-space columns need no statistics, so a
    streaming fit pass can skip reading them.
    """
    cols = [f.column for f in _vocab_features(spec)]
    cols += [f.column for f in spec.features if f.type == "numeric"]
    return list(dict.fromkeys(cols))


class _VocabCounter:
    """Exact value counts of one table's vocabulary, merged chunk by chunk."""

    def __init__(self) -> None:
        self._counts: Optional[pa.Table] = None  # columns v (key), c (count)

    def update(self, parts: List[pa.Array]) -> None:
        # fit() casts every part to string when the parts' key types differ; do the same
        # here across features and across chunks, so the result matches the one-table fit.
        types = {p.type for p in parts}
        if self._counts is not None:
            types.add(self._counts.schema.field("v").type)
        if len(types) > 1:
            parts = [p.cast(pa.string()) for p in parts]
            if self._counts is not None:
                self._counts = self._counts.set_column(
                    0, "v", self._counts.column("v").cast(pa.string())
                )
        new = [self._counts] if self._counts is not None else []
        for p in parts:
            vc = pc.value_counts(p.drop_null())
            new.append(
                pa.table({"v": vc.field("values"), "c": vc.field("counts").cast(pa.int64())})
            )
        merged = pa.concat_tables(new)
        if len(new) > 1:
            summed = merged.group_by("v").aggregate([("c", "sum")])
            merged = pa.table({"v": summed.column("v"), "c": summed.column("c_sum")})
        self._counts = merged

    @property
    def key_type(self) -> pa.DataType:
        assert self._counts is not None
        return self._counts.schema.field("v").type

    def counts(self) -> Tuple[np.ndarray, np.ndarray]:
        """(values, counts) numpy arrays, in no particular order."""
        assert self._counts is not None
        vals = self._counts.column("v").to_numpy()
        return vals, self._counts.column("c").to_numpy()


class _Moments:
    """Count, mean, M2 (sum of squared deviations), min and max of the finite values,
    plus the count of non-finite ones; merged per chunk with Chan et al.'s pairwise update,
    which is exact in exact arithmetic and, unlike raw sums of squares, does not cancel
    catastrophically when the mean is large next to the spread (timestamps, prices)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.n_bad = 0

    def update(self, x: np.ndarray) -> np.ndarray:
        """Add a chunk (float64, NaN where missing); returns its finite values."""
        ok = _finite32(x)
        finite = x[ok]
        self.n_bad += int(x.size - finite.size)
        if finite.size:
            mb = float(finite.mean())
            m2b = float(np.square(finite - mb).sum())
            self.merge(finite.size, mb, m2b)
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
        return finite

    def merge(self, nb: int, mb: float, m2b: float) -> None:
        na = self.n
        n = na + nb
        delta = mb - self.mean
        # For a single chunk this keeps numpy's mean bit for bit (na == 0).
        self.mean = mb if na == 0 else self.mean + delta * nb / n
        self.m2 = m2b if na == 0 else self.m2 + m2b + delta * delta * na * nb / n
        self.n = n


class _Reservoir:
    """A uniform random sample without replacement of at most ``size`` values.

    Every value gets a uniform random key; the sample is the ``size`` smallest keys
    (bottom-k sampling), which is vectorized and independent of how values are chunked
    into updates. Candidates above the current k-th key are dropped on arrival, and the
    rest compacted once they exceed ``size``, so the cost per value is amortized O(1).
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size = size
        self._rng = rng
        self._vals: List[np.ndarray] = []
        self._keys: List[np.ndarray] = []
        self._held = 0
        self._threshold = np.inf

    def update(self, x: np.ndarray) -> None:
        keys = self._rng.random(x.size)
        keep = keys < self._threshold
        self._vals.append(x[keep])
        self._keys.append(keys[keep])
        self._held += int(keep.sum())
        if self._held > 2 * self._size:
            self._compact()

    def _compact(self) -> None:
        vals, keys = np.concatenate(self._vals), np.concatenate(self._keys)
        if vals.size > self._size:
            idx = np.argpartition(keys, self._size - 1)[: self._size]
            vals, keys = vals[idx], keys[idx]
            self._threshold = float(keys.max())
        self._vals, self._keys, self._held = [vals], [keys], vals.size

    def values(self) -> np.ndarray:
        """The sample (every value seen while there were at most ``size``)."""
        if not self._vals:
            return np.zeros(0)
        self._compact()
        return self._vals[0]


class _FitAccumulator:
    """Streaming statistics of every transform of a spec (see ``fit_streaming``)."""

    def __init__(self, spec: Spec, reservoir_size: int, seed: int) -> None:
        if reservoir_size < 1:
            raise ValueError(f"reservoir_size must be >= 1, got {reservoir_size}")
        self._spec = spec
        self._vocab_feats = _vocab_features(spec)
        self._vocabs: Dict[str, _VocabCounter] = {}
        for f in self._vocab_feats:
            self._vocabs.setdefault(spec.table_of(f), _VocabCounter())
        self._numeric = [f for f in spec.features if f.type == "numeric"]
        self._moments = {f.name: _Moments() for f in self._numeric}
        self._samples = {
            f.name: _Reservoir(reservoir_size, np.random.default_rng([seed, i]))
            for i, f in enumerate(self._numeric)
            if f.buckets is not None and f.buckets.boundaries is None
        }

    def update(self, table: pa.Table) -> None:
        parts: Dict[str, List[pa.Array]] = {}
        for f in self._vocab_feats:
            values, _ = _flatten(_column(table, f.column), f)
            parts.setdefault(self._spec.table_of(f), []).append(_normalize_ids(values))
        for tname, ps in parts.items():
            self._vocabs[tname].update(ps)
        for f in self._numeric:
            x = _clip(_as_numeric(_column(table, f.column), f.column), f)
            finite = self._moments[f.name].update(x)
            if f.name in self._samples:
                self._samples[f.name].update(finite)

    def state(self) -> Dict[str, Any]:
        spec = self._spec
        state: Dict[str, Any] = {
            "version": FORMAT_VERSION,
            "vocabs": {},
            "numeric": {},
            "buckets": {},
        }
        for tname, counter in self._vocabs.items():
            feats = [f for f in spec.features if f.is_sparse and spec.table_of(f) == tname]
            vspec = next((f.vocab for f in feats if f.vocab is not None), None)
            min_count = vspec.min_count if vspec else 1
            max_size = vspec.max_size if vspec else None
            vals, cnts = counter.counts()
            keep = cnts >= min_count
            vals, cnts = vals[keep], cnts[keep]
            # Stable order: by decreasing count, ties by value, so fits are reproducible.
            order = np.lexsort((vals.astype(str), -cnts))
            if max_size is not None:
                order = order[:max_size]
            state["vocabs"][tname] = {
                "type": "int64" if pa.types.is_integer(counter.key_type) else "string",
                "values": [v.item() if hasattr(v, "item") else v for v in vals[order]],
            }
        for f in self._numeric:
            m = self._moments[f.name]
            if m.n == 0:
                raise DataError(
                    column=f.column,
                    expected="at least one finite value in the training data",
                    found="none",
                )
            if f.buckets is not None:
                if f.buckets.boundaries is not None:
                    edges = list(f.buckets.boundaries)
                else:
                    sample = self._samples[f.name].values()
                    qs = np.quantile(sample, np.linspace(0, 1, f.buckets.num_buckets + 1)[1:-1])
                    edges = sorted(set(float(q) for q in qs))
                state["buckets"][f.name] = edges
                continue
            default_fill = m.min if f.normalize in ("minmax", "log") else m.mean
            fill = float(f.fill) if f.fill is not None else float(default_fill)
            # Missing cells take the fill value, which encoding then clips: fold them in
            # as n_bad copies of the clipped fill.
            filled = _Moments()
            filled.merge(m.n, m.mean, m.m2)
            lo, hi = m.min, m.max
            if m.n_bad:
                used = float(_clip(np.array([fill]), f)[0])
                filled.merge(m.n_bad, used, 0.0)
                lo, hi = min(lo, used), max(hi, used)
            state["numeric"][f.name] = {
                "fill": fill,
                "mean": float(filled.mean),
                "std": float(np.sqrt(filled.m2 / filled.n)),
                "min": float(lo),
                "max": float(hi),
            }
        return state
