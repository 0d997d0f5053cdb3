"""Model-ready batches: dense tensor, KeyedJaggedTensor, labels and sample-space masks."""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from torchrec_ple.data.transforms import EncodedData, gather_jagged


@dataclass
class MultiTaskBatch(Pipelineable):
    """One batch of B samples for K tasks.

    Args:
        dense (torch.Tensor): (B, D) float32 normalized numeric features.
        sparse (KeyedJaggedTensor): ids of every sparse feature, B bags per key.
        labels (torch.Tensor): (B, K) float32; 0 outside a task's sample space.
        masks (torch.Tensor): (B, K) float32 ``phi``: 1 where the sample is in the task's
            sample space.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    masks: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> MultiTaskBatch:
        return MultiTaskBatch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            masks=self.masks.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)
        self.masks.record_stream(stream)

    def pin_memory(self) -> MultiTaskBatch:
        return MultiTaskBatch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            masks=self.masks.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])


class _BatchPlan:
    """What :func:`build_batch` prepares once per encoded table: every per-row array in one
    row-major record, so a batch is one gather of ``B`` records.

    Gathering array by array costs one NumPy call and one random pass over the rows per
    array (the 32 census id columns were two thirds of batch building), and every pass
    misses the cache once per row. A record holds a sample's one-id-per-row ids (in the
    smallest unsigned type that holds the largest id; cast back to int64 in the copy that
    transposes a batch to key-major), its dense features, labels and masks side by side:
    the census sample is 76 bytes, one or two cache lines instead of four arrays' worth
    (a batch's gathers take half the time when the table is not in cache, as in training).
    The record copies the table's arrays (the per-row bytes once more); jagged ids (several
    per row) stay in their own arrays.

    Args:
        data (EncodedData): the encoded table.
    """

    def __init__(self, data: EncodedData) -> None:
        self._sources = (tuple(data.values), data.dense, data.labels, data.masks)
        self._aranges: Dict[int, np.ndarray] = {}  # bag offsets of all-single-id batches
        self._one_id_per_bag = all(o is None for o in data.offsets)
        n = data.num_rows
        fixed = [i for i, o in enumerate(data.offsets) if o is None]
        sections: List[Tuple[str, np.ndarray]] = []
        if fixed:
            cols = [data.values[i] for i in fixed]
            low = min(int(c.min()) for c in cols) if n else 0
            high = max(int(c.max()) for c in cols) if n else 0
            dtype = np.min_scalar_type(high) if low >= 0 else np.dtype(np.int64)
            ids = np.empty((n, len(cols)), dtype=dtype)
            for j, c in enumerate(cols):
                ids[:, j] = c
            sections.append(("ids", ids))
        sections += [("dense", data.dense), ("labels", data.labels), ("masks", data.masks)]
        # widest items first, so every section starts aligned to its item size
        sections.sort(key=lambda s: -s[1].dtype.itemsize)
        widest = max(a.dtype.itemsize for _, a in sections)
        self._layout: Dict[str, Tuple[int, int, np.dtype]] = {}
        start = 0
        for name, a in sections:
            width = a.shape[1] * a.dtype.itemsize
            self._layout[name] = (start, start + width, a.dtype)
            start += width
        self._record = np.zeros((n, -(-start // widest) * widest), dtype=np.uint8)
        for name, a in sections:
            lo, hi, _ = self._layout[name]
            self._record[:, lo:hi] = np.ascontiguousarray(a).view(np.uint8).reshape(n, hi - lo)
        # Key order as runs: (first, last) column range of consecutive fixed keys, or
        # the index of a jagged key; most tables are one run of fixed keys.
        self._runs: List[Tuple[bool, int, int]] = []
        column = 0
        for i, o in enumerate(data.offsets):
            if o is None:
                if self._runs and self._runs[-1][0]:
                    self._runs[-1] = (True, self._runs[-1][1], column + 1)
                else:
                    self._runs.append((True, column, column + 1))
                column += 1
            else:
                self._runs.append((False, i, i))

    def fits(self, data: EncodedData) -> bool:
        """Whether this plan was made from ``data``'s current arrays."""
        values, dense, labels, masks = self._sources
        return (
            dense is data.dense
            and labels is data.labels
            and masks is data.masks
            and len(values) == len(data.values)
            and all(a is b for a, b in zip(values, data.values))
        )

    def gather(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        """The records of ``rows``, one gather: ``dense``, ``labels``, ``masks`` as
        contiguous ``(B, .)`` arrays, and ``ids`` (when the table has one-id-per-row keys)
        as the key-major int64 ``(F * B,)`` values of those keys.

        Args:
            rows (np.ndarray): (B,) int64 row indices.
        """
        records = self._record[rows]
        out: Dict[str, np.ndarray] = {}
        for name, (lo, hi, dtype) in self._layout.items():
            part = records[:, lo:hi].view(dtype)
            if name == "ids":
                # one copy that transposes to key-major and casts to int64
                out[name] = part.T.astype(np.int64, order="C").reshape(-1)
            else:
                out[name] = np.ascontiguousarray(part)
        return out

    def sparse(
        self, data: EncodedData, rows: np.ndarray, fixed: Optional[np.ndarray]
    ) -> KeyedJaggedTensor:
        """The KeyedJaggedTensor of ``rows``: values and lengths key-major, B bags per key.

        Args:
            data (EncodedData): the table this plan was made from.
            rows (np.ndarray): (B,) int64 row indices.
            fixed (Optional[np.ndarray]): the ``ids`` of :meth:`gather` for ``rows``.
        """
        b = len(rows)
        all_values: List[np.ndarray] = []
        all_lengths: List[np.ndarray] = []
        length_per_key: List[int] = []
        for is_fixed, first, last in self._runs:
            if is_fixed:
                assert fixed is not None
                all_values.append(fixed[first * b : last * b])
                all_lengths.append(np.ones((last - first) * b, dtype=np.int32))
                length_per_key += [b] * (last - first)
            else:
                offsets = data.offsets[first]
                assert offsets is not None
                v, lengths = gather_jagged(data.values[first], offsets, rows)
                all_values.append(v)
                all_lengths.append(lengths.astype(np.int32))
                length_per_key.append(len(v))
        values = all_values[0] if len(all_values) == 1 else np.concatenate(all_values)
        lengths = all_lengths[0] if len(all_lengths) == 1 else np.concatenate(all_lengths)
        # Per-key totals and the bags' offsets are known here for free; TorchRec would
        # otherwise sum the lengths per key and copy them to Python (.tolist()) on first
        # use, and the lookup would compute the offsets from the lengths, every step.
        return KeyedJaggedTensor(
            keys=data.keys,
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths),
            offsets=torch.from_numpy(self._offsets(lengths, len(values))),
            stride=b,
            length_per_key=length_per_key,
            offset_per_key=[0, *itertools.accumulate(length_per_key)],
        )

    def _offsets(self, lengths: np.ndarray, total: int) -> np.ndarray:
        """``[0, cumsum(lengths)]`` as int32: every bag one id (only fixed keys) is an
        ``arange``, kept per size (each batch gets its own copy)."""
        if self._one_id_per_bag:
            cached = self._aranges.get(total)
            if cached is None:
                cached = self._aranges[total] = np.arange(total + 1, dtype=np.int32)
            return cached.copy()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets.astype(np.int32) if total < 2**31 else offsets


# Plans by id of their EncodedData, dropped when the data is garbage-collected; a plan
# also checks that the data's id arrays are still the ones it was made from.
_PLANS: Dict[int, _BatchPlan] = {}


def _plan(data: EncodedData) -> _BatchPlan:
    """The batch plan of ``data``, made on first use and kept while ``data`` lives."""
    plan = _PLANS.get(id(data))
    if plan is not None and plan.fits(data):
        return plan
    plan = _BatchPlan(data)
    if id(data) not in _PLANS:
        try:
            weakref.finalize(data, _PLANS.pop, id(data), None)
        except TypeError:  # not weak-referenceable: no cache, the plan serves one call
            return plan
    _PLANS[id(data)] = plan
    return plan


def build_batch(
    data: EncodedData, rows: np.ndarray, valid: Optional[np.ndarray] = None
) -> MultiTaskBatch:
    """Gather ``rows`` of encoded data into a batch (vectorized over rows and ids).

    The first call on a table packs its per-row arrays into one record per row (see
    :class:`_BatchPlan`); later calls gather a batch's records with one indexing operation.

    Args:
        data (EncodedData): the encoded table.
        rows (np.ndarray): (B,) int64 row indices.
        valid (Optional[np.ndarray]): (B,) bool; False marks padding rows, whose masks are
            zeroed so they count in no loss and no metric.

    Returns:
        MultiTaskBatch: the batch, on CPU.
    """
    plan = _plan(data)
    parts = plan.gather(rows)
    if data.keys:
        sparse = plan.sparse(data, rows, parts.get("ids"))
    else:
        sparse = KeyedJaggedTensor.empty(values_dtype=torch.int64)
    masks = parts["masks"]
    if valid is not None:
        masks = masks * valid[:, None].astype(np.float32)
    return MultiTaskBatch(
        dense=torch.from_numpy(parts["dense"]),
        sparse=sparse,
        labels=torch.from_numpy(parts["labels"]),
        masks=torch.from_numpy(masks),
    )


class BatchLoader:
    """Iterates an encoded table in batches, optionally shuffled, split across ranks.

    Every rank gets the same number of batches of the same sizes (TorchRec's collectives
    need that): the row order is split into ``world_size`` equal shards, the last ones
    padded with repeated rows whose masks are zero, so padding changes no loss or metric.

    Args:
        data (EncodedData): the encoded table.
        batch_size (int): samples per batch (per rank).
        shuffle (bool): a new permutation each epoch (seeded by ``seed`` and the epoch).
            Default: False.
        seed (int): shuffling seed. Default: 0.
        rank (int): this process's rank. Default: 0.
        world_size (int): number of processes. Default: 1.

    Example::

        loader = BatchLoader(encoded, batch_size=1024, shuffle=True)
        loader.set_epoch(0)
        for batch in loader:
            ...
    """

    def __init__(
        self,
        data: EncodedData,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._data = data
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._seed = seed
        self._rank = rank
        self._world_size = world_size
        self._epoch = 0
        self._start_batch = 0
        _plan(data)  # the records, built with the data rather than in the first step

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; skip the first ``start_batch`` batches (resume)."""
        self._epoch = epoch
        self._start_batch = start_batch

    @property
    def shard_size(self) -> int:
        return -(-self._data.num_rows // self._world_size)

    def __len__(self) -> int:
        return -(-self.shard_size // self._batch_size)

    def _shard(self) -> tuple[np.ndarray, np.ndarray]:
        n = self._data.num_rows
        if self._shuffle:
            order = np.random.default_rng([self._seed, self._epoch]).permutation(n)
        else:
            order = np.arange(n)
        size = self.shard_size
        padded = np.resize(order, size * self._world_size) if n else order
        valid = np.arange(size * self._world_size) < n
        sl = slice(self._rank * size, (self._rank + 1) * size)
        return padded[sl], valid[sl]

    def rows(self, epoch: int, batch: int) -> np.ndarray:
        """Row indices (into the encoded table) of batch ``batch`` of ``epoch`` on this rank."""
        saved = self._epoch
        self._epoch = epoch
        rows, _ = self._shard()
        self._epoch = saved
        return rows[batch * self._batch_size : (batch + 1) * self._batch_size]

    def __iter__(self) -> Iterator[MultiTaskBatch]:
        rows, valid = self._shard()
        for i in range(self._start_batch, len(self)):
            sl = slice(i * self._batch_size, (i + 1) * self._batch_size)
            v = valid[sl]
            yield build_batch(self._data, rows[sl], None if v.all() else v)


# ---------------------------------------------------------------------------- padding
# Two padding rules, each what its loader always did (changing either changes numbers:
# dropout draws per row): BatchLoader (rows cached in memory) pads a rank's share with
# repeated rows whose masks are zero and keeps a short last batch on one rank; streamed
# batches are always ``batch_size`` rows, completed with empty rows (:func:`pad_batch`).
# Either way padding counts in no loss and no metric.


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
