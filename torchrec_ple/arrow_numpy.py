"""Arrow arrays to NumPy without pandas.

``pyarrow.Array.to_numpy(zero_copy_only=False)`` goes through pyarrow's pandas bridge,
which imports pandas on first use: 0.17 s of every ``fit``, ``validate`` and ``predict``
that reads a numeric or boolean column (measured on the census benchmark, where the data
phase took 0.47 s). :func:`to_numpy` reads the values of the column types the encoders
use straight from the Arrow buffers, with the results ``to_numpy`` gives, and leaves any
other type to pyarrow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

__all__ = ["array_of", "to_numpy"]


def to_numpy(arr: pa.Array) -> np.ndarray:
    """The values of ``arr`` as NumPy, as ``arr.to_numpy(zero_copy_only=False)`` gives them.

    Integer and floating columns: a read-only view of the values when there is no null;
    with nulls, a new array with NaN at the nulls (float64 for integers). Booleans without
    nulls: a bool array. Strings: an object array of ``str`` (None at nulls). Anything else
    (dictionaries, booleans with nulls, dates, half floats...) goes to pyarrow's
    ``to_numpy``.

    Args:
        arr (pa.Array): the array (a ``ChunkedArray`` is combined first).

    Returns:
        np.ndarray: ``(len(arr),)``.
    """
    if isinstance(arr, pa.ChunkedArray):  # pyarrow's result is a writable copy then
        values = to_numpy(arr.combine_chunks())
        return values if values.flags.writeable else values.copy()
    kind = arr.type
    numeric = pa.types.is_integer(kind) or (
        pa.types.is_floating(kind) and not pa.types.is_float16(kind)
    )
    if numeric:
        return _numeric(arr)
    if pa.types.is_boolean(kind) and not arr.null_count:
        if len(arr) == 0:
            return np.zeros(0, dtype=bool)
        return _bits(arr.buffers()[1], arr.offset, len(arr))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        out = np.empty(len(arr), dtype=object)  # str, None at nulls
        out[:] = arr.to_pylist()
        return out
    return arr.to_numpy(zero_copy_only=False)


def _numeric(arr: pa.Array) -> np.ndarray:
    dtype = np.dtype(arr.type.to_pandas_dtype())
    if len(arr) == 0:
        return np.zeros(0, dtype=np.float64 if arr.null_count else dtype)
    buffers = arr.buffers()
    if buffers[1] is None:  # all null, no values buffer
        return np.full(len(arr), np.nan, dtype=dtype if dtype.kind == "f" else np.float64)
    values = np.frombuffer(
        buffers[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )
    if arr.null_count:  # a new array, NaN at the nulls: float64 for integers
        out = values.astype(dtype if dtype.kind == "f" else np.float64)
        out[~_bits(buffers[0], arr.offset, len(arr))] = np.nan
        return out
    values.flags.writeable = False  # a view of Arrow's memory, read-only as pyarrow's
    return values


def _bits(buffer: pa.Buffer, offset: int, length: int) -> np.ndarray:
    """An Arrow bitmap (validity or boolean values) as ``length`` bools from ``offset``."""
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
    return bits[offset : offset + length].astype(bool)


def array_of(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    """An Arrow array of ints (``kind`` int64: Python ints or a NumPy array) or Python strs
    (``kind`` string), no nulls, as ``pa.array(values, kind)`` builds it, without pyarrow's
    pandas check (which imports pandas); anything else goes to ``pa.array``.

    Args:
        values (Sequence[Any]): the values.
        kind (pa.DataType): ``pa.int64()`` or ``pa.string()``.

    Returns:
        pa.Array: ``(len(values),)``.
    """
    n = len(values)
    if kind == pa.int64():
        ints = np.asarray(values, dtype=np.int64).reshape(n)
        return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(ints)])
    if kind == pa.string() and all(type(v) is str for v in values):
        encoded = [v.encode("utf-8") for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        if offsets[-1] < 2**31:  # string offsets are int32
            buffers = [
                None,
                pa.py_buffer(offsets.astype(np.int32)),
                pa.py_buffer(b"".join(encoded)),
            ]
            return pa.Array.from_buffers(kind, n, buffers)
    return pa.array(values, kind)
