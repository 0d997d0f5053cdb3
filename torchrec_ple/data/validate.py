"""Checking a spec against its data: the schema from metadata (:func:`check_data`), or
every row through the fitted transforms and the data policies (:func:`scan_data`)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pyarrow as pa

from torchrec_ple.data.sources import load_tables, read_schema, require_columns, spec_columns
from torchrec_ple.data.transforms import EncodedData, FeatureTransforms, describe_report
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


def data_location(spec: Spec, split: str) -> str:
    """Where a split's rows come from, for error messages."""
    d = spec.data
    if d.source == "synthetic":
        return f"synthetic {split} data"
    if d.source == "feast":
        assert d.feast is not None
        return f"Feast rows of {d.feast.entity_df} ({split})"
    fs = d.train if split == "train" or d.validation is None else d.validation
    assert fs is not None
    if split == "validation" and d.validation is None:
        return f"{fs.path} (the held-out validation rows)"
    return str(fs.path)


def fit_and_encode(
    spec: Spec,
    train: pa.Table,
    validation: pa.Table,
    transforms: Optional[FeatureTransforms] = None,
) -> Tuple[FeatureTransforms, EncodedData, Optional[EncodedData]]:
    """Fit transforms on ``train`` (unless given) and encode both tables.

    A :class:`DataError` raised on the way names the file the rows came from.

    Returns:
        Tuple: (transforms, encoded train, encoded validation or None when empty).
    """
    split = "train"
    try:
        if transforms is None:
            transforms = FeatureTransforms.fit(spec, train)
        enc_train = transforms.encode(train)
        split = "validation"
        enc_valid = transforms.encode(validation) if validation.num_rows else None
        split = "train"
        for k, t in enumerate(spec.tasks):
            if enc_train.masks[:, k].sum() == 0:
                raise DataError(
                    column=t.label,
                    expected=f"at least one training row in task '{t.name}''s sample space",
                    found="none (check its label column and sample_space condition)",
                )
    except DataError as e:
        if e.file is None:
            e.file = data_location(spec, split)
        raise
    return transforms, enc_train, enc_valid


def scan_data(spec: Spec) -> List[str]:
    """Read every row, fit the transforms and encode as training would, applying the data
    policies: the errors training would meet, found before it starts. Non-streaming
    reading: every row is loaded into memory.

    Returns:
        List[str]: per split, the rows and what the policies changed or dropped.
    """
    train, validation = load_tables(spec)
    _, enc_train, enc_valid = fit_and_encode(spec, train, validation)
    lines = []
    for split, enc in (("train", enc_train), ("validation", enc_valid)):
        if enc is None:
            continue
        rep = enc.report
        lines.append(
            f"{split} ({data_location(spec, split)}): {rep['rows']} rows read, {enc.num_rows} kept"
        )
        lines += [f"  {line}" for line in describe_report(rep)]
    return lines
