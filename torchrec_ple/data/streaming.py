"""Datasets larger than memory: a reader's shards streamed into fixed-count batches.

The data path (:mod:`torchrec_ple.data.pipeline`) caches a split's encoded rows in
memory by default; with ``data.streaming: true`` it reads them one chunk at a time
instead, with the same reader, the same transforms and the same batch layout:

1. the transforms are fitted in one streaming pass over the training rows
   (:func:`~torchrec_ple.data.fitting.fit_transforms`, only the columns fitting needs);
2. the reader plans its shards over ranks from metadata alone
   (:meth:`~torchrec_ple.data.readers.base.Reader.plan`: for files, Parquet row groups
   cut into contiguous row ranges of equal size, CSV files whole);
3. :class:`StreamingBatches` reads one rank's shards, split again over DataLoader
   workers, encodes each chunk (vectorized), mixes rows in a bounded shuffle buffer and
   yields :class:`~torchrec_ple.data.batch.MultiTaskBatch` es. Every rank yields the same
   number of batches of exactly ``batch_size`` rows (TorchRec's collectives need that);
   the missing rows are padding rows with empty bags, zero features and zero masks, which
   count in no loss and no metric.

Every row is read exactly once per epoch across ranks and workers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Union

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ple.data.batch import MultiTaskBatch, build_batch, concat_encoded, pad_batch
from torchrec_ple.data.fitting import fit_transforms
from torchrec_ple.data.readers import make_reader
from torchrec_ple.data.readers.base import Reader, assign_whole
from torchrec_ple.data.readers.files import (
    DEFAULT_READ_ROWS,
    FilesReader,
    Fragment,
    column_names,
    iter_tables,
    list_files,
    plan_fragments,
    read_fragment,
    split_fragments,
)
from torchrec_ple.data.sources import spec_columns
from torchrec_ple.data.transforms import (
    EncodedData,
    FeatureTransforms,
    check_dropped,
    merge_reports,
    take_encoded,
)
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import FileSpec, Spec

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


def _encode_chunk(transforms: FeatureTransforms, table: pa.Table, where: str) -> EncodedData:
    """Encode one chunk, dropped rows masked; an error names the chunk's file.

    The chunk's drops are not checked against ``data.max_dropped_fraction`` here: a
    chunk can be one row. :class:`StreamingBatches` checks the epoch's merged counts.
    """
    try:
        return transforms.encode(table, dropped="mask")
    except DataError as e:
        if e.file is None:
            e.file = where
        raise


@dataclass
class _RankStream(IterableDataset):
    """One rank's shards as full batches, split over the DataLoader's workers.

    Each worker yields ``batch_size``-row batches, then at most one :class:`_Remainder`.
    """

    shards: List[Any]
    reader: Reader
    transforms: FeatureTransforms
    columns: List[str]
    batch_size: int
    shuffle: bool
    shuffle_buffer: int
    seed: int
    rank: int
    epoch: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def __iter__(self) -> Iterator[Union[_Packed, _Remainder, _Counts, _Failed]]:
        info = get_worker_info()
        wid, workers = (0, 1) if info is None else (info.id, info.num_workers)
        # a copy: the reader's handles inherited through fork stay the parent's
        self.reader = copy.copy(self.reader)
        try:
            for item in self.iterate(wid, workers):
                yield _Packed.pack(item) if isinstance(item, MultiTaskBatch) else item
        except DataError as e:
            yield _Failed(e)

    def iterate(
        self, worker: int, workers: int
    ) -> Iterator[Union[MultiTaskBatch, _Remainder, _Counts]]:
        frags = assign_whole(self.shards, workers)[worker]
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
            where = getattr(frag, "path", None) or self.reader.location()
            for table in self.reader.read(frag, self.columns):
                enc = _encode_chunk(self.transforms, table, where)
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
    """One rank's batches of a reader's rows read chunk by chunk (a drop-in for BatchLoader).

    Every rank yields ``len(self)`` batches of exactly ``batch_size`` rows: ``len`` is
    ``ceil(max rank rows / batch_size)``, computed from the reader's plan, so it is the same
    on every rank without communication. The last real rows of a rank are completed with
    padding rows (empty bags, zero masks), and a rank with fewer rows gets batches of
    padding only. With ``shuffle``, each epoch reads the rank's shards in a new order
    and mixes rows in a shuffle buffer, seeded by ``(seed, epoch, rank, worker)``.

    With ``num_workers > 0``, a ``torch.utils.data.DataLoader`` runs that many worker
    processes, each reading a disjoint share of the rank's shards; the main process
    merges the workers' last partial batches and pads. The batch order depends on
    ``num_workers``: resume with the same value.

    Memory per worker: at most ``shuffle_buffer + read_rows`` encoded rows held (about
    1.5x that while a buffer is drained), one Arrow chunk of ``read_rows`` raw rows, and
    the DataLoader's prefetched batches.

    Args:
        spec (Spec): the spec (which columns to read).
        source (Union[FileSpec, Reader]): the rows: a reader of one split, or a file
            (read by a ``files`` reader).
        transforms (FeatureTransforms): fitted transforms.
        batch_size (int): rows per batch.
        shuffle (bool): shuffle shards and rows each epoch. Default: False.
        shuffle_buffer (int): rows of the shuffle buffer. Default: 100_000.
        seed (int): shuffling seed. Default: 0.
        rank (int): this process's rank. Default: 0.
        world_size (int): number of processes. Default: 1.
        num_workers (int): DataLoader worker processes; 0 reads in this process.
            Default: 0.
        read_rows (int): rows decoded and encoded at a time, for a file ``source``
            (a reader has its own). Default: 65_536.
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
        source: Union[FileSpec, Reader],
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
        reader = (
            source if isinstance(source, Reader) else FilesReader(spec, "train", source, read_rows)
        )
        columns = spec_columns(spec)
        reader.require(columns)
        plan = reader.plan(world_size)
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
        where = reader.location()
        self._where = where if world_size == 1 else f"{where} (rank {rank}'s rows)"
        self._stream = _RankStream(
            shards=plan[rank],
            reader=reader,
            transforms=transforms,
            columns=columns,
            batch_size=batch_size,
            shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            rank=rank,
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
            "fragments": len(self._stream.shards),
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
    reader: Optional[Reader] = None,
) -> StreamingBatches:
    """The :class:`StreamingBatches` of a spec's ``train`` or ``validation`` data.

    Training batches are shuffled with ``data.shuffle_buffer`` and ``train.seed``;
    validation batches are read in file order, ``train.eval_batch_size`` (default 4x the
    batch size) at a time. Both use ``data.num_workers`` workers. ``reader``: read these
    rows instead of the split's (e.g. ``evaluate --input``).
    """
    reader = reader or make_reader(spec, split)
    if not reader.exists() or reader.held_out():
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
        reader,
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
