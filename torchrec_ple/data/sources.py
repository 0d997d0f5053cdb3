"""Reading raw rows: Parquet/CSV files or the synthetic generator, into ``pyarrow.Table``."""

from __future__ import annotations

import difflib
import re
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_ple.spec.errors import DataError, first_line
from torchrec_ple.spec.schema import FileSpec, Spec


def use_returning_memory_pool() -> str:
    """Make Arrow allocate from jemalloc when this pyarrow has it, unless the user chose a
    pool (``ARROW_DEFAULT_MEMORY_POOL``); returns the pool's name.

    Reading and encoding a table allocates and frees Arrow buffers worth several times the
    encoded data. pyarrow's default pool (mimalloc) keeps freed pages mapped, so they stay in
    the process's resident memory through training; jemalloc hands them back within about a
    second. Measured on the census-like benchmark table (200k rows): peak RSS of a whole
    ``fit`` 760-830 MB with mimalloc, 650-675 MB with jemalloc, at the same speed.
    """
    import os

    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return pa.default_memory_pool().backend_name
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pass  # a pyarrow built without jemalloc: keep its default
    return pa.default_memory_pool().backend_name


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
        if fs.path.is_dir():
            return _parquet_dataset(fs).schema
        return _parquet_file(fs).schema_arrow
    return _read_csv(fs, nrows=1000).schema


def _parquet_dataset(fs: FileSpec) -> Any:
    """A directory of Parquet files as one ``pyarrow.dataset.Dataset``."""
    # Imported here: pyarrow.dataset imports pandas (~1 s, ~40 MB); a single file is read
    # with pyarrow.parquet alone.
    import pyarrow.dataset as ds

    try:
        return ds.dataset(str(fs.path), format="parquet")
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(
            file=str(fs.path), expected="readable Parquet data", found=first_line(e)
        ) from None


def _parquet_file(fs: FileSpec) -> pq.ParquetFile:
    """One Parquet file (its footer read)."""
    try:
        return pq.ParquetFile(str(fs.path))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(
            file=str(fs.path), expected="readable Parquet data", found=first_line(e)
        ) from None


def _check_parquet_files(dataset: Any, fs: FileSpec, wanted: Sequence[str]) -> None:
    """Every file of a Parquet directory has the wanted columns (footers only): pyarrow
    would silently read a column a file lacks as nulls."""
    for frag in dataset.get_fragments():
        try:
            names = frag.physical_schema.names
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(
                file=frag.path, expected="a readable Parquet file", found=first_line(e)
            ) from None
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(
                file=frag.path,
                column=missing[0],
                expected=f"the columns of the other files of {fs.path}",
                found=f"a file without {missing}",
            )
        for c in wanted:
            want, got = dataset.schema.field(c).type, frag.physical_schema.field(c).type
            if not _readable_as(got, want):
                # pyarrow would cast the file to the first file's types and fail naming
                # neither the file nor the column, or read ids as text
                raise DataError(
                    file=frag.path,
                    column=c,
                    expected=f"type {want} like the other files of {fs.path}",
                    found=str(got),
                )


def check_parquet_directory(fs: FileSpec, wanted: Sequence[str]) -> None:
    """Every file of a Parquet directory has the wanted columns, with the types of the
    first file (footers only); nothing to check for a single file or a CSV source."""
    if file_format(fs) == "parquet" and fs.path.is_dir():
        _check_parquet_files(_parquet_dataset(fs), fs, wanted)


def _readable_as(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether a file's column type reads losslessly as the dataset's (the first file's)."""
    if got == want or pa.types.is_null(got) or pa.types.is_null(want):
        return True
    if pa.types.is_dictionary(got):
        got = got.value_type
    if pa.types.is_dictionary(want):
        want = want.value_type
    text = (pa.types.is_string, pa.types.is_large_string)
    if any(f(got) for f in text) and any(f(want) for f in text):
        return True
    if pa.types.is_integer(got) or pa.types.is_boolean(got):
        # integers widen to wider integers and to floats
        return pa.types.is_integer(want) or pa.types.is_floating(want)
    if pa.types.is_floating(got):
        return pa.types.is_floating(want)
    listy = (pa.types.is_list, pa.types.is_large_list)
    if any(f(got) for f in listy) and any(f(want) for f in listy):
        return _readable_as(got.value_type, want.value_type)
    return got == want


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
    """A CSV file, or every CSV file of a directory (``format: csv``) one after another."""
    if not fs.path.is_dir():
        return _read_csv_file(fs.path, fs, nrows)
    from torchrec_ple.data.streaming import list_files

    tables: List[pa.Table] = []
    for path in list_files(fs):  # a DataError when the directory holds no CSV file
        table = _read_csv_file(path, fs, nrows)
        if tables:
            _check_like_first(table, tables[0].schema, path, fs)
        tables.append(table)
        if nrows is not None and sum(t.num_rows for t in tables) >= nrows:
            break
    # pandas infers each file apart: ids with a gap are floats in one file, ints in another
    return pa.concat_tables(tables, promote_options="permissive")


def _check_like_first(table: pa.Table, first: pa.Schema, path: Path, fs: FileSpec) -> None:
    """A CSV file of a folder has the first file's columns, with types read as them."""
    missing = [c for c in first.names if c not in table.column_names]
    extra = [c for c in table.column_names if c not in first.names]
    if missing or extra:
        raise DataError(
            file=str(path),
            column=(missing or extra)[0],
            expected=f"the columns of the other files of {fs.path}",
            found=f"a file without {missing}" if missing else f"a file with {extra} too",
        )
    for c in first.names:
        got, want = table.schema.field(c).type, first.field(c).type
        if not (_readable_as(got, want) or _readable_as(want, got)):
            raise DataError(
                file=str(path),
                column=c,
                expected=f"{want} like the other files of {fs.path}",
                found=str(got),
            )


def _read_csv_file(path: Path, fs: FileSpec, nrows: Optional[int] = None) -> pa.Table:
    import pandas as pd

    try:
        frame = pd.read_csv(path, nrows=nrows, **csv_options(fs))
        if fs.names is None:
            _check_header(path, fs, frame)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(file=str(path), expected="a readable CSV file", found=str(e)) from None
    except (EOFError, OSError, zlib.error) as e:
        # a truncated or damaged .gz/.bz2/.zip/.xz: the decompressor's error, not a traceback
        raise DataError(
            file=str(path),
            expected="a readable CSV file",
            found=f"{type(e).__name__}: {first_line(e)}",
            hint="the compressed file is truncated or damaged" if _compressed(path) else None,
        ) from None
    return frame_to_table(frame, str(path))


def _compressed(path: Path) -> bool:
    return path.suffix.lower() in (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")


def _check_header(path: Path, fs: FileSpec, frame: Any) -> None:
    """Refuse a header naming a column twice: pandas would rename the second ``x.1`` and
    the spec would read the first without a word."""
    import pandas as pd

    opts = csv_options(fs)
    opts.update(header=None, names=None)
    raw = pd.read_csv(path, nrows=1, dtype=str, **opts)
    if raw.empty:
        return
    names = [str(v) for v in raw.iloc[0].tolist()]
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                file=str(path),
                column=name,
                expected="each column name once in the header",
                found=f"'{name}' again at position {i + 1} (pandas would read it as '{frame.columns[i]}')"
                if i < len(frame.columns)
                else f"'{name}' again at position {i + 1}",
            )
        seen.add(name)


# The largest id an int64 column holds.
_INT64_MAX = 2**63 - 1


_INTEGER_TEXT = re.compile(r"[+-]?\d+")


def _check_integer_text(frame: Any, file: str) -> None:
    """An all-integer column that pandas kept as text because a value is beyond int64 and
    uint64 (pandas 2 keeps the digits as strings, pandas 3 as Python ints) is named in a
    :class:`DataError` rather than read as text ids or numbers."""
    for col in frame.columns:
        values = frame[col]
        if values.dtype != object and not str(values.dtype).startswith("str"):
            continue
        cells = values.dropna().tolist()
        if not cells or not all(isinstance(v, str) and _INTEGER_TEXT.fullmatch(v) for v in cells):
            continue
        for i, v in enumerate(values.tolist()):
            if isinstance(v, str) and not -_INT64_MAX - 1 <= int(v) <= _INT64_MAX:
                raise DataError(
                    file=file,
                    column=str(col),
                    row=i,
                    expected=f"integers within int64 (at most {_INT64_MAX})",
                    found=f"{int(v)}",
                    hint="hash such ids to 63 bits, or prefix them with a letter to read them as text",
                )


def frame_to_table(frame: Any, file: str) -> pa.Table:
    """A pandas frame read from ``file`` as an Arrow table; a column Arrow cannot hold
    (integers beyond int64) is named in a :class:`DataError`.

    Args:
        frame (pandas.DataFrame): the rows.
        file (str): where they came from, for the message.
    """
    _check_integer_text(frame, file)
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        error = e
    for col in frame.columns:
        try:
            pa.array(frame[col], from_pandas=True)
        except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
            big = [
                (i, v)
                for i, v in enumerate(frame[col].tolist())
                if isinstance(v, int) and not -_INT64_MAX - 1 <= v <= _INT64_MAX
            ]
            if big:
                raise DataError(
                    file=file,
                    column=str(col),
                    row=big[0][0],
                    expected=f"integers within int64 (at most {_INT64_MAX})",
                    found=f"{big[0][1]}",
                    hint="hash such ids to 63 bits, or prefix them with a letter to read them as text",
                ) from None
            raise DataError(
                file=file, column=str(col), expected="one type per column", found=first_line(e)
            ) from None
    raise DataError(file=file, expected="columns Arrow can hold", found=first_line(error))


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
        try:
            if fs.path.is_dir():
                dataset = _parquet_dataset(fs)
                _check_parquet_files(dataset, fs, wanted or dataset.schema.names)
                table = dataset.to_table(columns=wanted)
            else:
                table = _parquet_file(fs).read(columns=wanted)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(
                file=str(fs.path), expected="readable Parquet data", found=first_line(e)
            ) from None
    else:
        table = _read_csv(fs)
        if wanted is not None:
            table = table.select(wanted)
    if table.num_rows == 0:
        raise DataError(file=str(fs.path), expected="at least one row", found="an empty table")
    return table


def missing_column_error(
    file: str, available: Iterable[str], wanted: Iterable[str]
) -> Optional[DataError]:
    """The :class:`DataError` naming the first wanted column ``available`` lacks, or None."""
    names = list(available)
    for col in wanted:
        if col not in names:
            close = difflib.get_close_matches(col, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return DataError(
                file=file,
                column=col,
                expected=f"a column named '{col}'{hint}",
                found=f"columns {names[:20]}" + (" ..." if len(names) > 20 else ""),
            )
    return None


def require_columns(fs: FileSpec, available: Iterable[str], wanted: Iterable[str]) -> None:
    """Raise a :class:`DataError` naming the first wanted column the file lacks."""
    error = missing_column_error(str(fs.path), available, wanted)
    if error is not None:
        raise error


def spec_columns(spec: Spec) -> List[str]:
    """Every raw column a spec reads: features, labels and sample-space conditions."""
    cols = [f.column for f in spec.features] + [t.label for t in spec.tasks]
    cols += [t.sample_space.column for t in spec.tasks if t.sample_space is not None]
    return list(dict.fromkeys(cols))


def load_tables(spec: Spec) -> Tuple[pa.Table, pa.Table]:
    """The (train, validation) tables a spec declares, read whole by its source's readers
    (:mod:`torchrec_ple.data.readers`); an empty validation table when it has none.

    With a ``files`` source and no validation file, a seeded random
    ``validation_fraction`` of the training rows is held out.
    """
    from torchrec_ple.data.readers import make_reader

    train, valid = make_reader(spec, "train"), make_reader(spec, "validation")
    cols = spec_columns(spec)
    whole = train.read_all(cols)
    own = not valid.held_out() and valid.exists()
    tables = train.select(whole), valid.select(valid.read_all(cols) if own else whole)
    train.release()
    valid.release()
    return tables
