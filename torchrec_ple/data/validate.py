"""Checking a spec against its data's schema, reading only metadata or a small sample."""

from __future__ import annotations

from typing import List

import pyarrow as pa

from torchrec_ple.data.sources import read_schema, require_columns, spec_columns
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec, Spec


def _usable(t: pa.DataType, kind: str) -> bool:
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)
    listy = pa.types.is_list(t) or pa.types.is_large_list(t)
    if kind == "numeric":
        return numeric or pa.types.is_null(t)
    if kind == "sequence":
        return listy or text
    return numeric or text or pa.types.is_null(t)


def check_file(spec: Spec, fs: FileSpec) -> str:
    """Raise :class:`DataError` unless every column the spec reads exists with a usable type.

    Returns:
        str: a one-line summary of the file's schema.
    """
    schema = read_schema(fs)
    require_columns(fs, schema.names, spec_columns(spec))
    for f in spec.features:
        t = schema.field(f.column).type
        kind = "numeric" if f.type == "numeric" else f.type
        if not _usable(t, kind):
            raise DataError(
                file=str(fs.path),
                column=f.column,
                expected=f"a column usable as a {f.type} feature '{f.name}'",
                found=str(t),
            )
        if (
            f.type == "sequence"
            and not (pa.types.is_list(t) or pa.types.is_large_list(t))
            and f.separator is None
        ):
            raise DataError(
                file=str(fs.path),
                column=f.column,
                expected=f"a list column for sequence feature '{f.name}', or a 'separator' to split strings",
                found=str(t),
            )
    for task in spec.tasks:
        t = schema.field(task.label).type
        if task.type == "regression" and not _usable(t, "numeric"):
            raise DataError(
                file=str(fs.path),
                column=task.label,
                expected=f"numeric labels for regression task '{task.name}'",
                found=str(t),
            )
        if task.type == "binary" and task.positive is None and not _usable(t, "numeric"):
            raise DataError(
                file=str(fs.path),
                column=task.label,
                expected=f"0/1 labels for binary task '{task.name}', or 'positive: [...]' naming the positive values",
                found=str(t),
            )
    return f"{fs.path}: {len(schema.names)} columns, the {len(spec_columns(spec))} the spec reads are present and usable"


def check_data(spec: Spec) -> List[str]:
    """Check every reachable data file of a spec; one summary line per file."""
    if spec.data.source != "files":
        return [f"data: {spec.data.source} source (nothing to read)"]
    files = [f for f in (spec.data.train, spec.data.validation) if f is not None]
    return [check_file(spec, f) for f in files]
