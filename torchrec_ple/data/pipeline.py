"""The data path: a spec's readers to one rank's :class:`~torchrec_ple.data.batch.MultiTaskBatch` es.

Every source goes through the same steps (:func:`open_splits`): its reader (one per
split, :mod:`torchrec_ple.data.readers`) yields Arrow rows, the transforms are fitted on
the training rows, the rows are encoded and batched for this rank. ``data.streaming``
only says where the encoded rows live:

* ``false`` (default): the split is read whole once and its encoded rows are cached in
  memory; each epoch is a new permutation of all of them (:class:`~torchrec_ple.data.
  batch.BatchLoader`), split over ranks;
* ``true``: each epoch reads this rank's shards again, chunk by chunk, in DataLoader
  workers with a bounded shuffle buffer (:class:`~torchrec_ple.data.streaming.
  StreamingBatches`).

The checks run once on counts of all the rows: the dropped fraction and, for the
training rows, a non-empty sample space per task and a ``positive:`` list matching some
label (in memory when the split is encoded; streamed: in the fit pass, and the dropped
fraction on the epoch's running counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch.distributed as dist

from torchrec_ple.data.batch import BatchLoader, MultiTaskBatch
from torchrec_ple.data.fitting import fit_transforms
from torchrec_ple.data.prefetch import DataPrefetch
from torchrec_ple.data.readers import make_reader
from torchrec_ple.data.readers.base import Reader
from torchrec_ple.data.sources import load_tables, spec_columns
from torchrec_ple.data.streaming import StreamingBatches, streaming_loader
from torchrec_ple.data.transforms import (
    EncodedData,
    FeatureTransforms,
    describe_report,
    merge_reports,
)
from torchrec_ple.data.validate import check_memory, data_location, fit_and_encode
from torchrec_ple.spec.schema import Spec


def eval_batch_size(spec: Spec) -> int:
    """Rows per evaluation batch: ``train.eval_batch_size``, default 4x the batch size."""
    return spec.train.eval_batch_size or 4 * spec.train.batch_size


class DataSplit:
    """One split's batches on this rank: what the trainer iterates, whatever the source.

    Build it with :func:`open_splits` / :func:`open_split`. Every rank runs ``len(self)``
    batches per epoch (TorchRec's collectives need the same count everywhere).

    Args:
        spec (Spec): the spec.
        name (str): ``train`` or ``validation``.
        rank (int): this process's rank.
        world_size (int): number of processes.
        encoded (Optional[EncodedData]): the split's encoded rows, cached (in memory).
        streamed (Optional[StreamingBatches]): or the split read again each epoch.

    Example::

        transforms, train, valid = open_splits(spec, run / "transforms.json", fit=True)
        for epoch in range(epochs):
            train.set_epoch(epoch)
            for batch in train:
                ...
        for batch in valid.eval_batches():
            ...
    """

    def __init__(
        self,
        spec: Spec,
        name: str,
        rank: int = 0,
        world_size: int = 1,
        encoded: Optional[EncodedData] = None,
        streamed: Optional[StreamingBatches] = None,
    ) -> None:
        if (encoded is None) == (streamed is None):
            raise ValueError("a DataSplit holds encoded rows or streamed batches")
        self._spec, self._name = spec, name
        self._rank, self._world_size = rank, world_size
        self._encoded = encoded
        self._loader: Union[BatchLoader, StreamingBatches]
        if encoded is not None:
            self._loader = BatchLoader(
                encoded,
                spec.train.batch_size,
                shuffle=True,
                seed=spec.train.seed,
                rank=rank,
                world_size=world_size,
            )
        else:
            assert streamed is not None
            self._loader = streamed

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoded(self) -> Optional[EncodedData]:
        """The cached encoded rows (None when streamed)."""
        return self._encoded

    @property
    def streaming(self) -> bool:
        return self._encoded is None

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self._loader)

    @property
    def batch_size(self) -> int:
        """Rows per training batch (padding included)."""
        return self._spec.train.batch_size if self._encoded is not None else self._loader.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; skip the first ``start_batch`` batches (resume)."""
        self._loader.set_epoch(epoch, start_batch)

    def __iter__(self) -> Iterator[MultiTaskBatch]:
        return iter(self._loader)

    @property
    def eval_batch_size(self) -> int:
        """Rows per evaluation batch: ``train.eval_batch_size`` (default 4x the batch size)
        for cached rows; a streamed split's own batch size."""
        return eval_batch_size(self._spec) if self._encoded is not None else self.batch_size

    def eval_batches(self) -> Iterable[MultiTaskBatch]:
        """Every row once, in read order (this rank's share): what evaluation iterates.

        Cached rows: ``train.eval_batch_size`` at a time; streamed: the split's own
        batches (a validation split is read in order, ``eval_batch_size`` at a time).
        """
        if self._encoded is not None:
            return BatchLoader(
                self._encoded,
                eval_batch_size(self._spec),
                rank=self._rank,
                world_size=self._world_size,
            )
        self._loader.set_epoch(0)
        return self._loader

    def rows(self, epoch: int, batch: int) -> Optional[np.ndarray]:
        """Row indices of a training batch (cached rows only), for messages."""
        return self._loader.rows(epoch, batch) if isinstance(self._loader, BatchLoader) else None

    @property
    def num_rows(self) -> int:
        """Rows of the split, all ranks together (kept rows, when cached)."""
        if self._encoded is not None:
            return self._encoded.num_rows
        return self._loader.report["rows_all_ranks"]

    @property
    def rows_read(self) -> int:
        """Rows read of the split, all ranks together (dropped rows included)."""
        if self._encoded is not None:
            return int(self._encoded.report.get("rows", self._encoded.num_rows))
        return self._loader.report["rows_all_ranks"]

    @property
    def counted_up_front(self) -> bool:
        """Whether :attr:`counts` are known before training (cached rows: encoded once);
        streamed rows are counted as an epoch reads them."""
        return self._encoded is not None

    @property
    def counts(self) -> Dict[str, Any]:
        """The encoding counts of the split's rows, merged over chunks and ranks (a
        collective when streamed on several ranks: call it on every rank)."""
        if self._encoded is not None:
            return self._encoded.report
        own = self._loader.report.get("encoded", {})
        parts: List[Any] = [own]
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            parts = [None] * self._world_size
            dist.all_gather_object(parts, own)
        total: Dict[str, Any] = {}
        for part in parts:
            total = merge_reports(total, part or {})
        return total

    @property
    def report(self) -> Dict[str, Any]:
        """What metrics.json records of the split (a collective when streamed: see
        :attr:`counts`): the encoding counts, or the rank's reading with them."""
        if self._encoded is not None:
            return self._encoded.report
        return {**self._loader.report, "encoded": self.counts}

    def describe(self, counts: Optional[Dict[str, Any]] = None) -> List[str]:
        """Log lines of the counts (``data train: ...``)."""
        counts = self.counts if counts is None else counts
        tag = self._name if self._encoded is not None else f"{self._name} (one epoch, all ranks)"
        return [f"data {tag}: {line}" for line in describe_report(counts)]


def _streamed(
    spec: Spec,
    transforms: FeatureTransforms,
    name: str,
    rank: int,
    world_size: int,
    reader: Optional[Reader] = None,
) -> Optional[DataSplit]:
    reader = reader or make_reader(spec, name)
    if not reader.exists():
        return None
    loader = streaming_loader(spec, transforms, name, rank, world_size, reader=reader)
    return DataSplit(spec, name, rank, world_size, streamed=loader)


def open_splits(
    spec: Spec,
    transforms_path: Optional[Path],
    fit: bool,
    rank: int = 0,
    world_size: int = 1,
    on_fitted: Optional[Callable[[FeatureTransforms], None]] = None,
    barrier: Optional[Callable[[], None]] = None,
    prefetched: Optional[DataPrefetch] = None,
) -> Tuple[FeatureTransforms, DataSplit, Optional[DataSplit]]:
    """The transforms and this rank's training and validation splits of a spec.

    ``fit``: the transforms are fitted on the training rows (in memory: on every rank, on
    the whole table; streamed: on rank 0, in one pass, then loaded by every rank from
    ``transforms_path`` after ``barrier``); rank 0 then calls ``on_fitted`` (e.g. to
    replace an earlier run: the data was read and checked) and writes them to
    ``transforms_path``. Else they are loaded from ``transforms_path`` (a resumed run).

    Args:
        spec (Spec): the spec.
        transforms_path (Optional[Path]): the transforms file (None: not written; a
            streamed fit on several ranks needs it).
        fit (bool): fit the transforms, or load them.
        rank (int): this process's rank. Default: 0.
        world_size (int): number of processes. Default: 1.
        on_fitted (Optional[Callable[[FeatureTransforms], None]]): rank 0's hook once
            fitted and checked, before the transforms are written.
        barrier (Optional[Callable[[], None]]): waits for every rank (streamed fit).
        prefetched (Optional[DataPrefetch]): the same data already being read, fitted and
            encoded on a thread (:mod:`~torchrec_ple.data.prefetch`): taken instead of
            doing that work here when ``fit``, else dropped. Default: None.

    Returns:
        Tuple[FeatureTransforms, DataSplit, Optional[DataSplit]]: the transforms, the
        training split and the validation split (None when it has no rows).
    """
    if spec.data.streaming:
        transforms = None
        if fit and rank == 0:
            transforms = fit_transforms(spec)
            check_memory(spec, transforms.tables(), world_size)  # before the model, as in memory
            _fitted(transforms, transforms_path, on_fitted)
        if barrier is not None:
            barrier()
        if transforms is None or transforms_path is not None:
            assert transforms_path is not None, "streamed ranks load the fitted transforms"
            transforms = FeatureTransforms.load(spec, transforms_path)
        train = _streamed(spec, transforms, "train", rank, world_size)
        assert train is not None
        return transforms, train, _streamed(spec, transforms, "validation", rank, world_size)
    if prefetched is not None and fit:
        transforms, enc_train, enc_valid = prefetched.result(spec)
    else:
        if prefetched is not None:
            prefetched.discard()
        train_table, valid_table = load_tables(spec)
        saved = None
        if not fit:
            assert transforms_path is not None, "no transforms to load"
            saved = FeatureTransforms.load(spec, transforms_path)
        transforms, enc_train, enc_valid = fit_and_encode(spec, train_table, valid_table, saved)
        del train_table, valid_table
    if fit and rank == 0:
        _fitted(transforms, transforms_path, on_fitted)
    valid = None
    if enc_valid is not None:
        valid = DataSplit(spec, "validation", rank, world_size, encoded=enc_valid)
    return transforms, DataSplit(spec, "train", rank, world_size, encoded=enc_train), valid


def _fitted(
    transforms: FeatureTransforms,
    path: Optional[Path],
    on_fitted: Optional[Callable[[FeatureTransforms], None]],
) -> None:
    if on_fitted is not None:
        on_fitted(transforms)
    if path is not None:
        transforms.save(path)


def open_split(
    spec: Spec,
    name: str,
    transforms: FeatureTransforms,
    rank: int = 0,
    world_size: int = 1,
    reader: Optional[Reader] = None,
) -> Optional[DataSplit]:
    """One split encoded with fitted transforms (evaluation): no fitting, no training
    checks; None when the split has no rows.

    Args:
        spec (Spec): the spec.
        name (str): ``train`` or ``validation`` (streamed: shuffled training batches, or
            validation batches in read order).
        transforms (FeatureTransforms): the fitted transforms.
        rank (int): this process's rank. Default: 0.
        world_size (int): number of processes. Default: 1.
        reader (Optional[Reader]): read these rows instead (e.g. ``FilesReader(spec,
            "validation", file=...)`` for ``evaluate --input``). Default: the spec's.
    """
    if spec.data.streaming:
        return _streamed(spec, transforms, name, rank, world_size, reader)
    reader = reader or make_reader(spec, name)
    if not reader.exists():
        return None
    table = reader.select(reader.read_all(spec_columns(spec)))
    reader.release()
    encoded = transforms.encode(table)
    return DataSplit(spec, name, rank, world_size, encoded=encoded)


def scan_data(spec: Spec) -> List[str]:
    """Read every row, fit the transforms and encode as training would, applying the data
    policies: the errors training would meet, found before it starts (streamed specs
    read their rows chunk by chunk, one epoch of each split).

    Returns:
        List[str]: per split, the rows and what the policies changed or dropped.
    """
    transforms, train, valid = open_splits(spec, None, fit=True)
    lines = [check_memory(spec, transforms.tables())]
    for split in (train, valid):
        if split is None:
            continue
        if split.streaming:
            for _ in split.eval_batches():  # one epoch: counts and checks every row
                pass
        rep = split.counts
        kept = split.num_rows if not split.streaming else rep["rows"] - rep.get("dropped_rows", 0)
        lines.append(
            f"{split.name} ({data_location(spec, split.name)}): {rep['rows']} rows read, {kept} kept"
        )
        lines += [f"  {line}" for line in describe_report(rep)]
    return lines
