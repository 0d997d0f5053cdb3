"""Datasets larger than memory: Parquet/CSV rows streamed into fixed-count batches.

The in-memory path (:func:`~torchrec_ple.data.sources.load_tables` then
:class:`~torchrec_ple.data.batch.BatchLoader`) reads a whole table; this module reads one
chunk at a time instead, with the same transforms and the same batch layout:

1. :func:`fit_transforms` fits the transforms' statistics in one streaming pass over the
   training files (only the columns fitting needs);
2. :func:`plan_fragments` splits the rows over ranks from file metadata alone: Parquet
   row groups are cut into contiguous row ranges so that every rank gets the same number
   of rows (+-1); CSV files are split only at file granularity;
3. :class:`StreamingBatches` reads one rank's fragments, split again over DataLoader
   workers, encodes each chunk (vectorized), mixes rows in a bounded shuffle buffer and
   yields :class:`~torchrec_ple.data.batch.MultiTaskBatch` es. Every rank yields the same
   number of batches of exactly ``batch_size`` rows (TorchRec's collectives need that);
   the missing rows are padding rows with empty bags, zero features and zero masks, which
   count in no loss and no metric.

Every row is read exactly once per epoch across ranks and workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ple.data.batch import MultiTaskBatch, build_batch
from torchrec_ple.data.sources import (
    _check_header,
    csv_options,
    file_format,
    frame_to_table,
    read_schema,
    require_columns,
    spec_columns,
)
from torchrec_ple.data.transforms import (
    DEFAULT_RESERVOIR,
    EncodedData,
    FeatureTransforms,
    check_dropped,
    fit_columns,
    merge_reports,
    take_encoded,
)
from torchrec_ple.data.validate import positive_values_error
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec, Spec

# Rows decoded from a file at a time: bounds the memory of one read independently of the
# row group size chosen by whoever wrote the files.
DEFAULT_READ_ROWS = 65_536
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".data", ".test")


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
        if parquet or p.suffix.lower() in _CSV_SUFFIXES:
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


def _parquet_row_groups(files: Sequence[Path]) -> List[Tuple[str, int, int]]:
    """(file, row group, rows) of every row group, from the files' footers only."""
    out = []
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(file=str(path), expected="a Parquet file", found=str(e)) from None
        out += [(str(path), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return out


def plan_fragments(fs: FileSpec, world_size: int) -> List[List[Fragment]]:
    """Split a dataset's rows over ``world_size`` ranks, deterministically.

    Parquet: the row groups of all files (sorted by path) are laid end to end and cut into
    ``world_size`` contiguous row ranges of equal size (+-1 row), from the footers'
    row counts only. A row group crossing a cut becomes two fragments, each read by one
    rank (which decodes the group and keeps its part).

    CSV: each file is one fragment (a CSV file cannot be entered mid-way without parsing
    everything before), assigned greedily to the rank with the fewest rows, largest files
    first; rows are counted in a streaming pass. A single CSV file goes to one rank and the
    others get padding only: convert large CSV data to Parquet for several ranks.

    Args:
        fs (FileSpec): the data (a file or a directory of files).
        world_size (int): number of ranks.

    Returns:
        List[List[Fragment]]: the fragments of each rank, in read order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    files = list_files(fs)
    plan: List[List[Fragment]] = [[] for _ in range(world_size)]
    if file_format(fs) != "parquet":
        profiles = [(str(p), *_csv_profile(p, fs)) for p in files]
        loads = [0] * world_size
        order = sorted(range(len(profiles)), key=lambda i: (-profiles[i][1], i))
        for i in order:
            path, rows, text = profiles[i]
            r = min(range(world_size), key=lambda k: (loads[k], k))
            plan[r].append(Fragment(path, None, 0, rows, text))
            loads[r] += rows
        for frags in plan:  # read in file order
            frags.sort(key=lambda f: f.path)
        return plan
    groups = _parquet_row_groups(files)
    total = sum(n for _, _, n in groups)
    cuts = [total * r // world_size for r in range(world_size + 1)]
    pos = 0
    for path, g, n in groups:
        # The ranks whose [cut_r, cut_r+1) intersects this group's rows [pos, pos + n).
        for r in range(world_size):
            lo, hi = max(pos, cuts[r]), min(pos + n, cuts[r + 1])
            if lo < hi:
                plan[r].append(Fragment(path, g, lo - pos, hi - pos))
        pos += n
    return plan


def split_fragments(fragments: Sequence[Fragment], parts: int) -> List[List[Fragment]]:
    """Split fragments into ``parts`` disjoint lists of about equal rows (for workers).

    Greedy: largest fragments first, each to the lightest list; each list keeps the
    fragments' original order. Deterministic.
    """
    out: List[List[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in sorted(range(len(fragments)), key=lambda i: (-fragments[i].num_rows, i)):
        k = min(range(parts), key=lambda k: (loads[k], k))
        out[k].append(i)
        loads[k] += fragments[i].num_rows
    return [[fragments[i] for i in sorted(idx)] for idx in out]


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


def fit_transforms(
    spec: Spec,
    fs: Optional[FileSpec] = None,
    reservoir_size: int = DEFAULT_RESERVOIR,
    read_rows: int = DEFAULT_READ_ROWS,
) -> FeatureTransforms:
    """Fit a spec's transforms in one streaming pass over its training files.

    Reads only the columns fitting needs (vocabulary and numeric features), and the
    labels (and sample-space columns) of binary tasks with a ``positive:`` list, which
    must match some training label (the check of
    :func:`~torchrec_ple.data.validate.fit_and_encode`): hashed ids, other labels and
    the rest are never decoded. See
    :meth:`~torchrec_ple.data.transforms.FeatureTransforms.fit_streaming` for what is exact.

    Args:
        spec (Spec): the spec.
        fs (Optional[FileSpec]): the training data. Default: ``spec.data.train``.
        reservoir_size (int): sample size for quantile buckets. Default: 1M.
        read_rows (int): rows per chunk. Default: 65_536.
    """
    fs = fs if fs is not None else spec.data.train
    if fs is None:
        raise DataError(expected="a 'files' source with data.train for streaming", found="none")
    labels = _PositiveLabels(spec, str(fs.path))
    cols = list(dict.fromkeys(fit_columns(spec) + labels.columns))
    require_columns(fs, column_names(fs), cols)
    # Nothing to fit or check (hashed ids only, no numerics): skip reading altogether.
    tables = labels.watch(iter_tables(fs, cols, read_rows)) if cols else iter([])
    fitted = FeatureTransforms.fit_streaming(spec, tables, reservoir_size=reservoir_size)
    labels.check()
    return fitted


class _PositiveLabels:
    """What a fit pass sees of the labels of the binary tasks with a ``positive:`` list:
    whether any is positive (in the task's sample space, as training encodes it) and,
    until one is, the distinct values, for
    :func:`~torchrec_ple.data.validate.positive_values_error`.

    Args:
        spec (Spec): the spec.
        file (str): the training data, for the message.
    """

    def __init__(self, spec: Spec, file: str) -> None:
        self._tasks = [t for t in spec.tasks if t.type == "binary" and t.positive is not None]
        # labels are encoded without fitted state: no statistics are needed for them
        self._labeler = FeatureTransforms(spec, {})
        self._file = file
        self._values: Dict[str, Dict[Any, None]] = {t.name: {} for t in self._tasks}

    @property
    def columns(self) -> List[str]:
        """The raw columns the check reads."""
        cols = [t.label for t in self._tasks]
        cols += [t.sample_space.column for t in self._tasks if t.sample_space is not None]
        return list(dict.fromkeys(cols))

    def watch(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """The tables, unchanged, looked at on the way."""
        for table in tables:
            try:
                self._update(table)
            except DataError as e:
                if e.file is None:
                    e.file = self._file
                raise
            yield table

    def _update(self, table: pa.Table) -> None:
        for t in self._tasks:
            seen = self._values.get(t.name)
            if seen is None:  # a positive label already seen
                continue
            y, _, _ = self._labeler._encode_label(table, t)
            if (y > 0).any():
                del self._values[t.name]
                continue
            seen.update(dict.fromkeys(pc.unique(table.column(t.label).drop_null()).to_pylist()))

    def check(self) -> None:
        """Raise the in-memory path's :class:`DataError` for a task with no positive label."""
        for t in self._tasks:
            if t.name in self._values:
                e = positive_values_error(t, list(self._values[t.name]))
                e.file = self._file
                raise e


# ---------------------------------------------------------------------------- encoded rows


def concat_encoded(parts: Sequence[EncodedData]) -> EncodedData:
    """Rows of several encoded tables (same spec) back to back; reports are dropped."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    values, offsets = [], []
    for k in range(len(first.keys)):
        values.append(np.concatenate([p.values[k] for p in parts]))
        if first.offsets[k] is None:
            offsets.append(None)
            continue
        shifted, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            o = p.offsets[k]
            assert o is not None
            shifted.append(o[1:] - o[0] + base)
            base += int(o[-1] - o[0])
        offsets.append(np.concatenate(shifted))
    return EncodedData(
        keys=first.keys,
        values=values,
        offsets=offsets,
        dense=np.concatenate([p.dense for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        masks=np.concatenate([p.masks for p in parts]),
    )


def pad_batch(
    batch: Optional[MultiTaskBatch], size: int, keys: List[str], dense_dim: int, tasks: int
) -> MultiTaskBatch:
    """Extend a batch to ``size`` rows with padding rows (or build one of padding only).

    Padding rows have an empty bag for every key and zero dense values, labels and masks:
    they count in no loss and no metric, and cost no embedding lookup.

    Args:
        batch (Optional[MultiTaskBatch]): b <= size real rows, or None for none.
        size (int): rows wanted.
        keys (List[str]): sparse keys (for a batch built from nothing).
        dense_dim (int): D, dense columns.
        tasks (int): K, tasks.

    Returns:
        MultiTaskBatch: ``size`` rows, the real ones first.
    """
    b = batch.batch_size if batch is not None else 0
    extra = size - b
    if batch is not None and extra == 0:
        return batch
    if keys:
        lengths = torch.zeros(len(keys), size, dtype=torch.int32)
        if batch is not None:
            lengths[:, :b] = batch.sparse.lengths().view(len(keys), b)
            values = batch.sparse.values()
        else:
            values = torch.zeros(0, dtype=torch.int64)
        sparse = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths.flatten(), stride=size)
    else:
        sparse = KeyedJaggedTensor.empty(values_dtype=torch.int64)

    def grow(t: Optional[torch.Tensor], width: int) -> torch.Tensor:
        pad = torch.zeros(extra, width, dtype=torch.float32)
        return pad if t is None else torch.cat([t, pad])

    return MultiTaskBatch(
        dense=grow(batch.dense if batch else None, dense_dim),
        sparse=sparse,
        labels=grow(batch.labels if batch else None, tasks),
        masks=grow(batch.masks if batch else None, tasks),
    )


# ---------------------------------------------------------------------------- streaming


def _identity(x: Any) -> Any:
    # collate_fn of the DataLoader: items are finished batches already (module level:
    # picklable for spawn/forkserver workers).
    return x


@dataclass
class _Remainder:
    """A worker's last rows (fewer than a batch), merged across workers by the wrapper."""

    data: EncodedData


@dataclass
class _Counts:
    """The encoding report of one chunk (rows filled, clipped, dropped...), summed by the
    wrapper into the epoch's report."""

    report: Dict[str, Any]


@dataclass
class _Failed:
    """A worker's :class:`DataError`, re-raised as is by the wrapper: the DataLoader
    would re-raise it as ``DataError(<worker traceback>)``, many lines and no file."""

    error: DataError


@dataclass
class _Packed:
    """A batch as numpy arrays, for the trip from a worker process.

    Tensors would travel as shared-memory segments, one per tensor and batch, which costs
    more than the batch itself here; numpy arrays are pickled through the pipe instead and
    wrapped without a copy on arrival.
    """

    keys: List[str]
    values: np.ndarray
    lengths: np.ndarray
    dense: np.ndarray
    labels: np.ndarray
    masks: np.ndarray

    @classmethod
    def pack(cls, batch: MultiTaskBatch) -> _Packed:
        sp = batch.sparse
        return cls(
            keys=list(sp.keys()),
            values=sp.values().numpy(),
            lengths=sp.lengths().numpy(),
            dense=batch.dense.numpy(),
            labels=batch.labels.numpy(),
            masks=batch.masks.numpy(),
        )

    def unpack(self) -> MultiTaskBatch:
        b = self.labels.shape[0]
        if self.keys:
            sparse = KeyedJaggedTensor(
                keys=self.keys,
                values=torch.from_numpy(self.values),
                lengths=torch.from_numpy(self.lengths),
                stride=b,
            )
        else:
            sparse = KeyedJaggedTensor.empty(values_dtype=torch.int64)
        return MultiTaskBatch(
            dense=torch.from_numpy(self.dense),
            sparse=sparse,
            labels=torch.from_numpy(self.labels),
            masks=torch.from_numpy(self.masks),
        )


def _encode_chunk(transforms: FeatureTransforms, table: pa.Table, frag: Fragment) -> EncodedData:
    """Encode one chunk, dropped rows masked; an error names the chunk's file.

    The chunk's drops are not checked against ``data.max_dropped_fraction`` here: a
    chunk can be one row. :class:`StreamingBatches` checks the epoch's merged counts.
    """
    try:
        return transforms.encode(table, dropped="mask")
    except DataError as e:
        if e.file is None:
            e.file = frag.path
        raise


@dataclass
class _RankStream(IterableDataset):
    """One rank's fragments as full batches, split over the DataLoader's workers.

    Each worker yields ``batch_size``-row batches, then at most one :class:`_Remainder`.
    """

    fragments: List[Fragment]
    fs: FileSpec
    transforms: FeatureTransforms
    columns: List[str]
    batch_size: int
    shuffle: bool
    shuffle_buffer: int
    seed: int
    rank: int
    read_rows: int
    epoch: int = 0
    _files: Dict[str, pq.ParquetFile] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    def __getstate__(self) -> Dict[str, Any]:
        # Open file handles stay in the process that opened them.
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    def __iter__(self) -> Iterator[Union[_Packed, _Remainder, _Counts, _Failed]]:
        info = get_worker_info()
        wid, workers = (0, 1) if info is None else (info.id, info.num_workers)
        self._files = {}  # handles inherited through fork stay the parent's
        try:
            for item in self.iterate(wid, workers):
                yield _Packed.pack(item) if isinstance(item, MultiTaskBatch) else item
        except DataError as e:
            yield _Failed(e)

    def iterate(
        self, worker: int, workers: int
    ) -> Iterator[Union[MultiTaskBatch, _Remainder, _Counts]]:
        frags = split_fragments(self.fragments, workers)[worker]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 0, worker])
        if self.shuffle:
            frags = [frags[i] for i in rng.permutation(len(frags))]
        b = self.batch_size
        # Emit once this many rows are held; then keep about half, so that every row
        # leaves from a pool of at least ``shuffle_buffer`` rows.
        threshold = max(self.shuffle_buffer, b) if self.shuffle else b
        held: List[EncodedData] = []
        n_held = 0
        for frag in frags:
            for table in read_fragment(frag, self.fs, self.columns, self.read_rows, self._files):
                enc = _encode_chunk(self.transforms, table, frag)
                yield _Counts(enc.report)
                held.append(enc)
                n_held += enc.num_rows
                if n_held >= threshold:
                    data = concat_encoded(held)
                    held = []  # drop the parts before copying the kept rows
                    order = rng.permutation(n_held) if self.shuffle else np.arange(n_held)
                    keep = threshold // 2 if self.shuffle else 0
                    n_out = max(b, (n_held - keep) // b * b)
                    yield from (build_batch(data, order[s : s + b]) for s in range(0, n_out, b))
                    rest = order[n_out:]
                    held = [take_encoded(data, rest)] if rest.size else []
                    n_held = int(rest.size)
        if n_held:
            data = concat_encoded(held)
            order = rng.permutation(n_held) if self.shuffle else np.arange(n_held)
            n_out = n_held // b * b
            yield from (build_batch(data, order[s : s + b]) for s in range(0, n_out, b))
            if n_out < n_held:
                yield _Remainder(take_encoded(data, order[n_out:]))


class StreamingBatches:
    """One rank's batches of a dataset read chunk by chunk (a drop-in for BatchLoader).

    Every rank yields ``len(self)`` batches of exactly ``batch_size`` rows: ``len`` is
    ``ceil(max rank rows / batch_size)``, computed from file metadata, so it is the same
    on every rank without communication. The last real rows of a rank are completed with
    padding rows (empty bags, zero masks), and a rank with fewer rows gets batches of
    padding only. With ``shuffle``, each epoch reads the rank's fragments in a new order
    and mixes rows in a shuffle buffer, seeded by ``(seed, epoch, rank, worker)``.

    With ``num_workers > 0``, a ``torch.utils.data.DataLoader`` runs that many worker
    processes, each reading a disjoint share of the rank's fragments; the main process
    merges the workers' last partial batches and pads. The batch order depends on
    ``num_workers``: resume with the same value.

    Memory per worker: at most ``shuffle_buffer + read_rows`` encoded rows held (about
    1.5x that while a buffer is drained), one Arrow chunk of ``read_rows`` raw rows, and
    the DataLoader's prefetched batches.

    Args:
        spec (Spec): the spec (which columns to read).
        fs (FileSpec): the data.
        transforms (FeatureTransforms): fitted transforms.
        batch_size (int): rows per batch.
        shuffle (bool): shuffle fragments and rows each epoch. Default: False.
        shuffle_buffer (int): rows of the shuffle buffer. Default: 100_000.
        seed (int): shuffling seed. Default: 0.
        rank (int): this process's rank. Default: 0.
        world_size (int): number of processes. Default: 1.
        num_workers (int): DataLoader worker processes; 0 reads in this process.
            Default: 0.
        read_rows (int): rows decoded and encoded at a time. Default: 65_536.
        multiprocessing_context (Optional[str]): ``fork``, ``spawn`` or ``forkserver``
            for the workers. Default: the platform's (fork on Linux).

    Example::

        loader = StreamingBatches(spec, spec.data.train, transforms, 2048, shuffle=True,
                                  rank=ctx.rank, world_size=ctx.world_size)
        loader.set_epoch(0)
        for batch in loader:
            ...
    """

    def __init__(
        self,
        spec: Spec,
        fs: FileSpec,
        transforms: FeatureTransforms,
        batch_size: int,
        shuffle: bool = False,
        shuffle_buffer: int = 100_000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        read_rows: int = DEFAULT_READ_ROWS,
        multiprocessing_context: Optional[str] = None,
    ) -> None:
        if batch_size < 1 or shuffle_buffer < 1 or num_workers < 0 or read_rows < 1:
            raise ValueError("batch_size, shuffle_buffer, read_rows >= 1 and num_workers >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        columns = spec_columns(spec)
        require_columns(fs, column_names(fs), columns)
        plan = plan_fragments(fs, world_size)
        self._rank_rows = [sum(f.num_rows for f in frags) for frags in plan]
        self._batch_size = batch_size
        self._num_batches = -(-max(self._rank_rows) // batch_size)
        self._num_workers = num_workers
        self._mp_context = multiprocessing_context
        self._keys = [f.name for f in spec.sparse_features]
        self._dense_dim = len(spec.dense_features)
        self._tasks = len(spec.tasks)
        self._seed = seed
        self._rank = rank
        self._shuffle = shuffle
        self._start_batch = 0
        self._counts: Dict[str, Any] = {}  # the last complete epoch's encoding report
        self._max_dropped = spec.data.max_dropped_fraction
        self._where = str(fs.path) if world_size == 1 else f"{fs.path} (rank {rank}'s rows)"
        self._stream = _RankStream(
            fragments=plan[rank],
            fs=fs,
            transforms=transforms,
            columns=columns,
            batch_size=batch_size,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            rank=rank,
            read_rows=read_rows,
        )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip the first ``start_batch`` batches (resume).

        Skipped batches are still read and discarded: the shuffle buffer's state at
        ``start_batch`` depends on everything read before it.
        """
        self._stream.epoch = epoch
        self._start_batch = start_batch

    def __len__(self) -> int:
        return self._num_batches

    @property
    def batch_size(self) -> int:
        """Rows of every batch (padding included)."""
        return self._batch_size

    @property
    def num_rows(self) -> int:
        """Real rows of this rank per epoch."""
        return self._rank_rows[self._rank]

    @property
    def report(self) -> Dict[str, Any]:
        """What this rank reads: rows, fragments, padding rows per epoch."""
        return {
            "rows": self.num_rows,
            "rows_all_ranks": sum(self._rank_rows),
            "fragments": len(self._stream.fragments),
            "padding_rows": self._num_batches * self._batch_size - self.num_rows,
            "streaming": True,
            # this rank, one epoch: "rows dropped" stay in the batches with zero masks
            "encoded": self._counts,
        }

    def _check_dropped(self, counts: Dict[str, Any]) -> None:
        """``data.max_dropped_fraction`` of this rank's rows, on the epoch's counts so far.

        Drops only grow during an epoch, so counts over the limit of the whole epoch
        stop it at once, before the rows are trained on. Every rank checks its own rows
        (no communication): where all ranks pass, so do the rows of all ranks together.
        """
        check_dropped(counts, self._max_dropped, self.num_rows, file=self._where)

    def _source(self) -> Iterator[Union[MultiTaskBatch, _Packed, _Remainder, _Counts, _Failed]]:
        if self._num_workers == 0:
            return self._stream.iterate(0, 1)
        loader = DataLoader(
            self._stream,
            batch_size=None,
            num_workers=self._num_workers,
            collate_fn=_identity,
            multiprocessing_context=self._mp_context,
            # Its own generator: creating the iterator draws a worker base seed, which
            # must not advance torch's global RNG (dropout), or a resumed run diverges.
            generator=torch.Generator().manual_seed(self._seed),
        )
        return iter(loader)

    def __iter__(self) -> Iterator[MultiTaskBatch]:
        b = self._batch_size
        emitted = 0

        def out(batch: MultiTaskBatch) -> Iterator[MultiTaskBatch]:
            nonlocal emitted
            emitted += 1
            if emitted > self._num_batches:
                raise RuntimeError(
                    f"rank {self._rank} read more rows than its plan: files changed?"
                )
            if emitted > self._start_batch:
                yield batch

        remainders: List[EncodedData] = []
        counts: Dict[str, Any] = {}
        for item in self._source():
            if isinstance(item, _Counts):
                counts = merge_reports(counts, item.report)
                self._check_dropped(counts)
            elif isinstance(item, _Failed):
                raise item.error
            elif isinstance(item, _Remainder):
                remainders.append(item.data)
            else:
                yield from out(item.unpack() if isinstance(item, _Packed) else item)
        if remainders:
            # Merge the workers' last rows into full batches; only the very last is partial.
            data = concat_encoded(remainders)
            n = data.num_rows
            order = np.arange(n)
            if self._shuffle:
                rng = np.random.default_rng([self._seed, self._stream.epoch, self._rank, 1])
                order = rng.permutation(n)
            for s in range(0, n, b):
                batch = build_batch(data, order[s : s + b])
                yield from out(pad_batch(batch, b, self._keys, self._dense_dim, self._tasks))
        while emitted < self._num_batches:
            yield from out(pad_batch(None, b, self._keys, self._dense_dim, self._tasks))
        self._counts = counts


def streaming_loader(
    spec: Spec,
    transforms: FeatureTransforms,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    batch_size: Optional[int] = None,
) -> StreamingBatches:
    """The :class:`StreamingBatches` of a spec's ``train`` or ``validation`` data.

    Training batches are shuffled with ``data.shuffle_buffer`` and ``train.seed``;
    validation batches are read in file order, ``train.eval_batch_size`` (default 4x the
    batch size) at a time. Both use ``data.num_workers`` workers.
    """
    fs = spec.data.train if split == "train" else spec.data.validation
    if fs is None:
        raise DataError(expected=f"data.{split} (a file or directory) for streaming", found="none")
    train = split == "train"
    if batch_size is None:
        batch_size = (
            spec.train.batch_size
            if train
            else (spec.train.eval_batch_size or 4 * spec.train.batch_size)
        )
    return StreamingBatches(
        spec,
        fs,
        transforms,
        batch_size,
        shuffle=train,
        shuffle_buffer=spec.data.shuffle_buffer,
        seed=spec.train.seed,
        rank=rank,
        world_size=world_size,
        num_workers=spec.data.num_workers,
    )


__all__ = [
    "Fragment",
    "StreamingBatches",
    "column_names",
    "concat_encoded",
    "fit_transforms",
    "iter_tables",
    "list_files",
    "pad_batch",
    "plan_fragments",
    "read_fragment",
    "split_fragments",
    "streaming_loader",
]
