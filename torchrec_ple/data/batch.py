"""Model-ready batches: dense tensor, KeyedJaggedTensor, labels and sample-space masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional

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


def build_batch(
    data: EncodedData, rows: np.ndarray, valid: Optional[np.ndarray] = None
) -> MultiTaskBatch:
    """Gather ``rows`` of encoded data into a batch (vectorized over rows and ids).

    Args:
        data (EncodedData): the encoded table.
        rows (np.ndarray): (B,) int64 row indices.
        valid (Optional[np.ndarray]): (B,) bool; False marks padding rows, whose masks are
            zeroed so they count in no loss and no metric.

    Returns:
        MultiTaskBatch: the batch, on CPU.
    """
    all_values: List[np.ndarray] = []
    all_lengths: List[np.ndarray] = []
    b = len(rows)
    for values, offsets in zip(data.values, data.offsets):
        if offsets is None:
            all_values.append(values[rows])
            all_lengths.append(np.ones(b, dtype=np.int32))
        else:
            v, lengths = gather_jagged(values, offsets, rows)
            all_values.append(v)
            all_lengths.append(lengths.astype(np.int32))
    if data.keys:
        sparse = KeyedJaggedTensor(
            keys=data.keys,
            values=torch.from_numpy(np.concatenate(all_values)),
            lengths=torch.from_numpy(np.concatenate(all_lengths)),
            stride=b,
        )
    else:
        sparse = KeyedJaggedTensor.empty(values_dtype=torch.int64)
    masks = data.masks[rows]
    if valid is not None:
        masks = masks * valid[:, None].astype(np.float32)
    return MultiTaskBatch(
        dense=torch.from_numpy(np.ascontiguousarray(data.dense[rows])),
        sparse=sparse,
        labels=torch.from_numpy(np.ascontiguousarray(data.labels[rows])),
        masks=torch.from_numpy(np.ascontiguousarray(masks)),
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
