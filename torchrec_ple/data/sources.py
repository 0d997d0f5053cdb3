"""Reading raw rows: Parquet/CSV files or the synthetic generator, into ``pyarrow.Table``."""

from __future__ import annotations

import difflib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec, Spec


def file_format(fs: FileSpec) -> str:
    """The format of a file spec: its ``format`` or one inferred from the path."""
    if fs.format:
        return fs.format
    suffix = fs.path.suffix.lower()
    if suffix in (".parquet", ".pq") or fs.path.is_dir():
        return "parquet"
    return "csv"


def _check_exists(fs: FileSpec) -> None:
    if not fs.path.exists():
        raise DataError(
            file=str(fs.path), expected="an existing file or directory", found="nothing"
        )


def read_schema(fs: FileSpec) -> pa.Schema:
    """Column names and types, reading only Parquet metadata or a small CSV sample."""
    _check_exists(fs)
    if file_format(fs) == "parquet":
        return _parquet_dataset(fs).schema
    return _read_csv(fs, nrows=1000).schema


def _parquet_dataset(fs: FileSpec) -> ds.Dataset:
    try:
        return ds.dataset(str(fs.path), format="parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(
            file=str(fs.path), expected="readable Parquet data", found=_first_line(e)
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_parquet_files(dataset: ds.Dataset, fs: FileSpec, wanted: Sequence[str]) -> None:
    """Every file of a Parquet directory has the wanted columns (footers only): pyarrow
    would silently read a column a file lacks as nulls."""
    for frag in dataset.get_fragments():
        try:
            names = frag.physical_schema.names
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(
                file=frag.path, expected="a readable Parquet file", found=_first_line(e)
            ) from None
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(
                file=frag.path,
                column=missing[0],
                expected=f"the columns of the other files of {fs.path}",
                found=f"a file without {missing}",
            )


def csv_options(fs: FileSpec) -> Dict[str, Any]:
    """``pandas.read_csv`` keyword arguments of a CSV file spec (one parser for every path)."""
    return dict(
        sep=fs.separator,
        header=None if fs.names else "infer",
        names=fs.names,
        na_values=fs.na_values or None,
        comment=fs.comment,
        skiprows=fs.skip_rows,
        skipinitialspace=True,
    )


def _read_csv(fs: FileSpec, nrows: Optional[int] = None) -> pa.Table:
    import pandas as pd

    try:
        frame = pd.read_csv(fs.path, nrows=nrows, **csv_options(fs))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(file=str(fs.path), expected="a readable CSV file", found=str(e)) from None
    return pa.Table.from_pandas(frame, preserve_index=False)


def read_table(fs: FileSpec, columns: Optional[Sequence[str]] = None) -> pa.Table:
    """Read a whole file (or a directory of Parquet files) into memory.

    Args:
        fs (FileSpec): the file.
        columns (Optional[Sequence[str]]): only these columns; each must exist.

    Returns:
        pa.Table: the rows.
    """
    _check_exists(fs)
    wanted = list(dict.fromkeys(columns)) if columns is not None else None
    if wanted is not None:
        require_columns(fs, read_schema(fs).names, wanted)
    if file_format(fs) == "parquet":
        dataset = _parquet_dataset(fs)
        if fs.path.is_dir():
            _check_parquet_files(dataset, fs, wanted or dataset.schema.names)
        try:
            table = dataset.to_table(columns=wanted)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(
                file=str(fs.path), expected="readable Parquet data", found=_first_line(e)
            ) from None
    else:
        table = _read_csv(fs)
        if wanted is not None:
            table = table.select(wanted)
    if table.num_rows == 0:
        raise DataError(file=str(fs.path), expected="at least one row", found="an empty table")
    return table


def require_columns(fs: FileSpec, available: Iterable[str], wanted: Iterable[str]) -> None:
    """Raise a :class:`DataError` naming the first wanted column the file lacks."""
    names = list(available)
    for col in wanted:
        if col not in names:
            close = difflib.get_close_matches(col, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DataError(
                file=str(fs.path),
                column=col,
                expected=f"a column named '{col}'{hint}",
                found=f"columns {names[:20]}" + (" ..." if len(names) > 20 else ""),
            )


def spec_columns(spec: Spec) -> List[str]:
    """Every raw column a spec reads: features, labels and sample-space conditions."""
    cols = [f.column for f in spec.features] + [t.label for t in spec.tasks]
    cols += [t.sample_space.column for t in spec.tasks if t.sample_space is not None]
    return list(dict.fromkeys(cols))


def load_tables(spec: Spec) -> Tuple[pa.Table, pa.Table]:
    """The (train, validation) tables a spec declares.

    With a ``files`` source and no validation file, a seeded random
    ``validation_fraction`` of the training rows is held out.
    """
    if spec.data.source == "synthetic":
        from torchrec_ple.data.synthetic import generate

        return generate(spec.data.synthetic)
    if spec.data.source == "feast":
        from torchrec_ple.data.feast import load_spec_tables

        return load_spec_tables(spec)
    assert spec.data.train is not None
    cols = spec_columns(spec)
    train = read_table(spec.data.train, cols)
    if spec.data.validation is not None:
        return train, read_table(spec.data.validation, cols)
    frac = spec.data.validation_fraction
    if frac <= 0:
        return train, train.slice(0, 0)
    perm = np.random.default_rng(spec.train.seed).permutation(train.num_rows)
    n_valid = int(round(frac * train.num_rows))
    return train.take(np.sort(perm[n_valid:])), train.take(np.sort(perm[:n_valid]))
