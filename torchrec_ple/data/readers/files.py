"""The ``files`` source: Parquet and CSV files, or directories of them.

Shards (:class:`Fragment`) are Parquet row groups cut into contiguous row ranges so that
every rank gets the same number of rows (+-1), from the footers alone; a CSV file is one
shard (it cannot be entered mid-way without parsing everything before), rows counted in
one streaming pass. In memory the whole split is read at once (:func:`~torchrec_ple.data.
sources.read_table`); without a validation file, a seeded ``validation_fraction`` of the
training rows is held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_ple.arrow_numpy import array_of
from torchrec_ple.data.readers.base import Reader, assign_whole, cut_rows
from torchrec_ple.data.sources import (
    _check_header,
    csv_options,
    file_format,
    frame_to_table,
    read_schema,
    read_table,
)
from torchrec_ple.registry import READERS
from torchrec_ple.spec.check_data import CSV_SUFFIXES
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec

if TYPE_CHECKING:  # pragma: no cover
    from torchrec_ple.spec.check_base import Checks
    from torchrec_ple.spec.keys import KeyPath
    from torchrec_ple.spec.schema import DataSpec, Spec

# Rows decoded from a file at a time: bounds the memory of one read independently of the
# row group size chosen by whoever wrote the files.
DEFAULT_READ_ROWS = 65_536


@dataclass(frozen=True)
class Fragment:
    """Rows ``[start, stop)`` of one Parquet row group, or of a whole CSV file.

    Args:
        path (str): the file.
        row_group (Optional[int]): the Parquet row group; None for a CSV file.
        start (int): first row, counted inside the row group (or file).
        stop (int): one past the last row.
        str_columns (Tuple[str, ...]): CSV columns read as text in every chunk (they are
            text somewhere in the file; see :func:`_csv_profile`).
    """

    path: str
    row_group: Optional[int]
    start: int
    stop: int
    str_columns: Tuple[str, ...] = ()

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


# ---------------------------------------------------------------------------- planning


def list_files(fs: FileSpec) -> List[Path]:
    """The data files of a file spec, sorted: the file itself or a directory's files.

    A Parquet directory contributes every file except hidden (``.``/``_``) ones, searched
    recursively as ``pyarrow.dataset`` does; a CSV directory (``format: csv``) its files
    with a CSV suffix.
    """
    if not fs.path.exists():
        raise DataError(
            file=str(fs.path), expected="an existing file or directory", found="nothing"
        )
    if fs.path.is_file():
        return [fs.path]
    parquet = file_format(fs) == "parquet"
    files = []
    for p in sorted(fs.path.rglob("*")):
        rel = p.relative_to(fs.path).parts
        if not p.is_file() or any(part.startswith((".", "_")) for part in rel):
            continue
        if parquet or p.suffix.lower() in CSV_SUFFIXES:
            files.append(p)
    if not files:
        raise DataError(file=str(fs.path), expected="data files in the directory", found="none")
    return files


# CSV profiles by (path, size, mtime, options): every rank and epoch plans from the same pass.
_CSV_PROFILES: Dict[Tuple[str, int, int, str], Tuple[int, Tuple[str, ...]]] = {}


def _csv_profile(path: Path, fs: FileSpec) -> Tuple[int, Tuple[str, ...]]:
    """(rows, text columns) of a CSV file, from one streaming pass (cached).

    A column that pandas reads as text in any chunk is read as text in every chunk
    later: otherwise a chunk of only numeric-looking ids would become integers there and
    hash differently from the same ids elsewhere.

    The pass refuses what the in-memory reader refuses, with the same one line: a header
    naming a column twice, and integers beyond int64 (which pandas keeps as Python ints
    in a text column: read as text, they would be ids of another value).
    """
    import pandas as pd

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, repr(csv_options(fs)))
    if key in _CSV_PROFILES:
        return _CSV_PROFILES[key]
    rows, text = 0, set()
    try:
        if fs.names is None:
            _check_header(path, fs, pd.read_csv(path, nrows=0, **csv_options(fs)))
        for chunk in pd.read_csv(path, chunksize=DEFAULT_READ_ROWS, **csv_options(fs)):
            huge = [
                c
                for c, dt in chunk.dtypes.items()
                if pd.api.types.is_object_dtype(dt)
                and pd.api.types.infer_dtype(chunk[c], skipna=True) == "integer"
            ]
            if huge:  # only integers, yet not int64/uint64: some beyond int64
                _frame_to_table(chunk[huge], path, rows)
            rows += len(chunk)
            text.update(
                str(c) for c, dt in chunk.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(file=str(path), expected="a readable CSV file", found=str(e)) from None
    _CSV_PROFILES[key] = (rows, tuple(sorted(text)))
    return _CSV_PROFILES[key]


def column_names(fs: FileSpec) -> List[str]:
    """Column names of a dataset: Parquet metadata, or the first CSV file's header."""
    if file_format(fs) == "parquet":
        return read_schema(fs).names
    import pandas as pd

    path = list_files(fs)[0]
    try:
        head = pd.read_csv(path, nrows=5, **csv_options(fs))
        if fs.names is None:  # before the columns are looked for: 'x.1' is no column
            _check_header(path, fs, head)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(file=str(path), expected="a readable CSV file", found=str(e)) from None
    return [str(c) for c in head.columns]


def _parquet_row_groups(files: Sequence[Path]) -> List[Tuple[Tuple[str, int], int]]:
    """((file, row group), rows) of every row group, from the files' footers only."""
    out = []
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(file=str(path), expected="a Parquet file", found=str(e)) from None
        out += [((str(path), g), meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return out


def plan_fragments(fs: FileSpec, world_size: int) -> List[List[Fragment]]:
    """Split a dataset's rows over ``world_size`` ranks, deterministically.

    Parquet: the row groups of all files (sorted by path) are laid end to end and cut into
    ``world_size`` contiguous row ranges of equal size (+-1 row) (:func:`~torchrec_ple.
    data.readers.base.cut_rows`), from the footers' row counts only.

    CSV: each file is one fragment, assigned greedily to the rank with the fewest rows,
    largest files first; rows are counted in a streaming pass. A single CSV file goes to
    one rank and the others get padding only: convert large CSV data to Parquet for
    several ranks.

    Args:
        fs (FileSpec): the data (a file or a directory of files).
        world_size (int): number of ranks.

    Returns:
        List[List[Fragment]]: the fragments of each rank, in read order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    files = list_files(fs)
    if file_format(fs) != "parquet":
        frags = []
        for p in files:
            rows, text = _csv_profile(p, fs)
            frags.append(Fragment(str(p), None, 0, rows, text))
        return [sorted(part, key=lambda f: f.path) for part in assign_whole(frags, world_size)]
    plan = cut_rows(_parquet_row_groups(files), world_size)
    return [[Fragment(r.key[0], r.key[1], r.start, r.stop) for r in part] for part in plan]


def split_fragments(fragments: Sequence[Fragment], parts: int) -> List[List[Fragment]]:
    """Split fragments into ``parts`` disjoint lists of about equal rows (for workers)."""
    return assign_whole(fragments, parts)


# ---------------------------------------------------------------------------- reading


def read_fragment(
    frag: Fragment,
    fs: FileSpec,
    columns: Optional[Sequence[str]] = None,
    read_rows: int = DEFAULT_READ_ROWS,
    open_files: Optional[Dict[str, pq.ParquetFile]] = None,
) -> Iterator[pa.Table]:
    """The rows of a fragment, in tables of at most ``read_rows`` rows.

    Args:
        frag (Fragment): what to read.
        fs (FileSpec): the file spec (CSV parsing options).
        columns (Optional[Sequence[str]]): only these columns. Default: all.
        read_rows (int): rows per table. Default: 65_536.
        open_files (Optional[Dict[str, pq.ParquetFile]]): a cache of the last opened
            Parquet file, reused by consecutive fragments of one file.

    Yields:
        pa.Table: consecutive rows of the fragment.
    """
    if frag.row_group is None:
        yield from _read_csv_fragment(frag, fs, columns, read_rows)
        return
    pf = open_files.get(frag.path) if open_files is not None else None
    if pf is None:
        pf = pq.ParquetFile(frag.path)
        if open_files is not None:
            open_files.clear()  # one open file at a time, however many files there are
            open_files[frag.path] = pf
    cols = list(columns) if columns is not None else None
    pos = 0
    for rb in pf.iter_batches(batch_size=read_rows, row_groups=[frag.row_group], columns=cols):
        lo, hi = max(frag.start - pos, 0), min(frag.stop - pos, rb.num_rows)
        pos += rb.num_rows
        if lo < hi:
            yield pa.Table.from_batches([rb.slice(lo, hi - lo)])
        if pos >= frag.stop:
            break


def _read_csv_fragment(
    frag: Fragment, fs: FileSpec, columns: Optional[Sequence[str]], read_rows: int
) -> Iterator[pa.Table]:
    import pandas as pd

    wanted = set(columns) if columns is not None else None
    dtype = {c: str for c in frag.str_columns if wanted is None or c in wanted}
    reader = pd.read_csv(
        frag.path,
        chunksize=read_rows,
        usecols=(lambda c: c in wanted) if wanted is not None else None,
        dtype=dtype or None,
        **csv_options(fs),
    )
    pos = 0
    for chunk in reader:
        n = len(chunk)
        lo, hi = max(frag.start - pos, 0), min(frag.stop - pos, n)
        pos += n
        if lo < hi:
            table = _frame_to_table(chunk.iloc[lo:hi], Path(frag.path), pos - n + lo)
            yield table.select(list(columns)) if columns is not None else table
        if pos >= frag.stop:
            break


def _frame_to_table(frame: Any, path: Path, first_row: int) -> pa.Table:
    """:func:`~torchrec_ple.data.sources.frame_to_table` of rows ``first_row...`` of a CSV
    file: an error names the row counted from the file's first row, as in memory."""
    try:
        return frame_to_table(frame, str(path))
    except DataError as e:
        if e.row is not None:
            e.row += first_row
        raise


def iter_tables(
    fs: FileSpec, columns: Optional[Sequence[str]] = None, read_rows: int = DEFAULT_READ_ROWS
) -> Iterator[pa.Table]:
    """Every row of a dataset once, in file order, ``read_rows`` at a time."""
    files: Dict[str, pq.ParquetFile] = {}
    for frag in plan_fragments(fs, 1)[0]:
        yield from read_fragment(frag, fs, columns, read_rows, files)


# ---------------------------------------------------------------------------- the reader


@READERS.register("files")
class FilesReader(Reader):
    """``data.source: files``: ``data.train`` / ``data.validation`` (Parquet or CSV).

    Args:
        spec (Spec): the spec.
        split (str): ``train`` or ``validation``.
        file (Optional[FileSpec]): read this file instead of the split's (``evaluate
            --input``, tests). Default: the split's.
        read_rows (int): rows per chunk. Default: 65_536.
    """

    def __init__(
        self,
        spec: Spec,
        split: str,
        file: Optional[FileSpec] = None,
        read_rows: Optional[int] = None,
    ) -> None:
        super().__init__(spec, split)
        d = spec.data
        # no validation file: the validation rows are held out of the training rows in
        # memory (both splits read the training file); streaming has none
        self._holdout = file is None and d.validation is None and not d.streaming
        self._missing = file is None and split == "validation" and d.validation is None
        if file is None:
            file = d.validation if split == "validation" and d.validation else d.train
        if file is None:
            raise DataError(expected=f"data.{split} (a file or directory)", found="none")
        self._fs = file
        self._read_rows = read_rows or DEFAULT_READ_ROWS
        self._open: Dict[str, pq.ParquetFile] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # open file handles stay in the process that opened them
        return state

    @classmethod
    def check_spec(cls, checks: Checks, data: DataSpec, path: KeyPath) -> None:
        super().check_spec(checks, data, path)
        if data.train is None:
            checks.err(path + ("train",), "a training file for the 'files' source", "nothing")

    @property
    def file(self) -> FileSpec:
        return self._fs

    def exists(self) -> bool:
        if not self._missing:
            return True
        return self._holdout and self._spec.data.validation_fraction > 0

    def location(self) -> str:
        if self.held_out():
            return f"{self._fs.path} (the held-out validation rows)"
        return str(self._fs.path)

    def columns(self) -> List[str]:
        return column_names(self._fs)

    def plan(self, world_size: int) -> List[List[Fragment]]:
        return plan_fragments(self._fs, world_size)

    def read(self, shard: Fragment, columns: Optional[Sequence[str]]) -> Iterator[pa.Table]:
        return read_fragment(shard, self._fs, columns, self._read_rows, self._open)

    def read_all(self, columns: Optional[Sequence[str]]) -> pa.Table:
        return read_table(self._fs, columns)

    def held_out(self) -> bool:
        return self._holdout and self.split == "validation"

    def select(self, table: pa.Table) -> pa.Table:
        frac = self._spec.data.validation_fraction
        if not self._holdout:
            return table
        if frac <= 0:
            return table if self.split == "train" else table.slice(0, 0)
        perm = np.random.default_rng(self._spec.train.seed).permutation(table.num_rows)
        n_valid = int(round(frac * table.num_rows))
        rows = perm[n_valid:] if self.split == "train" else perm[:n_valid]
        return table.take(array_of(np.sort(rows), pa.int64()))
