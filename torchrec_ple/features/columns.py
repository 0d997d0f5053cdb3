"""Vectorized helpers over raw Arrow columns that every feature kind may use.

Nothing here loops over rows in Python: reading a column as floats or as vocabulary keys,
hashing ids, truncating and padding jagged lists, and applying a feature's ``on_missing``
policy to a mask of bad rows.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.arrow_numpy import to_numpy
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FeatureSpec

# The largest float32: a numeric value beyond it becomes inf in the model's input.
F32_MAX = float(np.finfo(np.float32).max)


def column(table: pa.Table, name: str) -> pa.Array:
    """The column ``name`` of ``table`` as one contiguous array."""
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def as_numeric(arr: pa.Array, where: str) -> np.ndarray:
    """Float64 numpy view of a numeric/bool column, NaN where missing.

    Args:
        arr (pa.Array): the column (numbers, bools, nulls or strings that parse as numbers).
        where (str): the column name, for the error.

    Returns:
        np.ndarray: float64 (N,).

    Raises:
        DataError: text that does not parse as numbers.
    """
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
    return to_numpy(arr).astype(np.float64)


def finite32(x: np.ndarray) -> np.ndarray:
    """Where ``x`` is finite and fits in float32 (1e308 is finite in float64 but inf in
    the model, and its square overflows the fitted statistics)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (np.abs(x) <= F32_MAX)


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


def normalize_ids(arr: pa.Array) -> pa.Array:
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
        np_arr = to_numpy(arr)
        finite = np_arr[~np.isnan(np_arr)]
        # Integer ids read with missing values become floats in pandas/CSV: undo that.
        if np.all(finite == np.round(finite)):
            return pc.cast(arr, pa.int64(), safe=False)
        return pc.cast(arr, pa.string())
    if pa.types.is_dictionary(arr.type):
        return arr.dictionary_decode().cast(pa.string())
    return arr.cast(pa.string())


def hash_ids(values: pa.Array, buckets: int) -> np.ndarray:
    """Ids ``1 + hash(value) % buckets``; 0 where a value is missing (int64 (N,))."""
    keys = normalize_ids(values)
    valid = np.asarray(to_numpy(keys.is_valid()), dtype=bool)
    fill = (
        pa.scalar(0, pa.int64()) if pa.types.is_integer(keys.type) else pa.scalar("", pa.string())
    )
    np_vals = to_numpy(keys.fill_null(fill))
    out = np.zeros(len(np_vals), dtype=np.int64)
    if valid.any():
        # pandas' hash_array is vectorized and seeded with a fixed key: stable across runs.
        # Imported here: a Parquet run without hashed features never loads pandas (~40 MB).
        import pandas as pd

        h = pd.util.hash_array(np_vals[valid])
        out[valid] = (h % np.uint64(buckets)).astype(np.int64) + 1
    return out


def truncate(values: pa.Array, offsets: np.ndarray, max_len: int) -> Tuple[pa.Array, np.ndarray]:
    """Keep the LAST ``max_len`` items of each list: logs append the most recent at the end."""
    lengths = np.diff(offsets)
    if lengths.size == 0 or lengths.max(initial=0) <= max_len:
        return values, offsets
    new_len = np.minimum(lengths, max_len)
    new_offsets = np.zeros_like(offsets)
    np.cumsum(new_len, out=new_offsets[1:])
    starts = offsets[1:] - new_len
    pos = np.repeat(starts - new_offsets[:-1], new_len) + np.arange(new_offsets[-1])
    return values.take(pa.array(pos)), new_offsets


def fill_empty(
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


def rows_of(bad_values: np.ndarray, offsets: Optional[np.ndarray], n: int) -> np.ndarray:
    """Rows holding at least one bad value (``bad_values`` is per flat value)."""
    if offsets is None:
        return bad_values
    rows = np.zeros(n, dtype=bool)
    if bad_values.any():
        row_of_value = np.repeat(np.arange(n), np.diff(offsets))
        rows[row_of_value[bad_values]] = True
    return rows


def first(rows: np.ndarray) -> int:
    """The first True row of a mask (for messages)."""
    return int(np.flatnonzero(rows)[0])


def missing_policy(
    f: FeatureSpec, rows: np.ndarray, drop: Dict[str, np.ndarray], what: str
) -> None:
    """Apply ``f.on_missing`` to the rows ``rows`` (bool (N,)) holding missing cells.

    ``error`` raises; ``drop`` records the rows in ``drop`` under ``"<name>: missing"``;
    the other policies (fill, oov) leave it to the caller's fallback encoding.

    Raises:
        DataError: ``on_missing: error`` and a missing cell.
    """
    if not rows.any():
        return
    if f.on_missing == "error":
        raise DataError(
            column=f.column,
            expected=f"no {what} (features '{f.name}' on_missing: error)",
            found=f"{int(rows.sum())} rows with them, e.g. row {first(rows)}",
        )
    if f.on_missing == "drop":
        drop[f"{f.name}: missing"] = rows
