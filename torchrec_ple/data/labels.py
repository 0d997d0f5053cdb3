"""Task labels and sample-space masks of a raw table."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_ple.arrow_numpy import to_numpy
from torchrec_ple.features.columns import as_numeric, column, finite32, normalize_ids
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import TaskSpec


def encode_label(table: pa.Table, t: TaskSpec) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """A task's labels and sample-space mask.

    Args:
        table (pa.Table): raw rows (N) holding the label and sample-space columns.
        t (TaskSpec): the task.

    Returns:
        Tuple[np.ndarray, np.ndarray, Dict[str, int]]: float32 (N,) labels (0 outside the
        sample space), float32 (N,) mask (1 in the sample space) and the counts
        (``in_sample_space``, ``label_missing``, ``label_invalid_dropped``).

    Raises:
        DataError: a binary label other than 0/1 with ``on_invalid: error``.
    """
    arr = column(table, t.label)
    present = np.asarray(to_numpy(arr.is_valid()), dtype=bool)
    invalid = np.zeros(len(arr), dtype=bool)
    if t.type == "binary" and t.positive is not None:
        keys = normalize_ids(arr)
        # a NaN label in a float column is missing, not a negative
        present &= np.asarray(to_numpy(keys.is_valid()), dtype=bool)
        pos = [p for p in t.positive]
        value_set = (
            pa.array([str(p) for p in pos])
            if pa.types.is_string(keys.type)
            else pa.array(pos).cast(keys.type)
        )
        y = np.asarray(to_numpy(pc.is_in(keys, value_set=value_set)), dtype=np.float64)
    else:
        y = as_numeric(arr, t.label)
        present &= finite32(y)  # a label beyond float32 is inf in the loss: missing
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
        in_space &= in_sample_space(table, t)
    y = np.where(in_space, y, 0.0)
    rep = {"in_sample_space": int(in_space.sum()), "label_missing": int((~present).sum())}
    if t.on_invalid == "drop":
        rep["label_invalid_dropped"] = int(invalid.sum())
    return y.astype(np.float32), in_space.astype(np.float32), rep


def in_sample_space(table: pa.Table, t: TaskSpec) -> np.ndarray:
    """Bool (N,): the rows meeting the task's ``sample_space`` condition."""
    ss = t.sample_space
    assert ss is not None
    arr = column(table, ss.column)
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
    return np.asarray(to_numpy(mask.fill_null(False)), dtype=bool)
