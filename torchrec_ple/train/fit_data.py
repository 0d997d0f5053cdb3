"""The data a run trains and evaluates on, behind the few calls the trainer makes.

Two data paths exist today: rows encoded in memory (:class:`EncodedData`, batched by a
:class:`BatchLoader`) and streamed batches (:class:`StreamingBatches`). Every place where
the trainer's work depends on the path is here, so that one data path can replace both by
changing this file (and :meth:`~torchrec_ple.train.trainer.Trainer._open_data`).

What the trainer needs of a split's batches (:func:`batches_of`): iterable of
``MultiTaskBatch`` with ``len()`` (batches per rank and epoch) and
``set_epoch(epoch, start_batch=0)``; of a split: a ``report`` dict (its encoding counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch.distributed as dist

from torchrec_ple.data.batch import BatchLoader, MultiTaskBatch
from torchrec_ple.data.streaming import StreamingBatches
from torchrec_ple.data.transforms import (
    EncodedData,
    FeatureTransforms,
    describe_report,
    merge_reports,
)
from torchrec_ple.train.distributed import DistContext

Split = Union[EncodedData, StreamingBatches]

__all__ = ["FitData", "Split", "batches_of", "data_report", "training_rows"]


@dataclass
class FitData:
    """The fitted transforms and the splits of a run.

    Args:
        transforms (FeatureTransforms): fitted (or loaded, on resume).
        train (Split): the training split.
        validation (Optional[Split]): the validation split, if any.
        train_rows (int): training rows over all ranks.
        validation_rows (int): validation rows over all ranks (0 without).
        seconds (float): time spent reading, fitting and encoding.
    """

    transforms: FeatureTransforms
    train: Split
    validation: Optional[Split]
    train_rows: int
    validation_rows: int
    seconds: float

    def describe(self) -> List[str]:
        """The encoding counts known once the data is read (``data <split>: ...`` lines)."""
        lines = []
        for name, data in (("train", self.train), ("validation", self.validation)):
            if isinstance(data, EncodedData):
                lines += [f"data {name}: {line}" for line in describe_report(data.report)]
        return lines

    def reports(
        self, ctx: DistContext, log: Optional[Callable[[str], None]]
    ) -> Dict[str, Optional[Dict[str, Any]]]:
        """``metrics.json``'s ``data``: each split's report (all ranks call)."""
        return {
            name: data_report(data, ctx, log, name)
            for name, data in (("train", self.train), ("validation", self.validation))
        }


def batches_of(
    data: Split,
    batch_size: int,
    ctx: DistContext,
    shuffle: bool = False,
    seed: int = 0,
) -> Any:
    """This rank's batches of a split: a :class:`BatchLoader` over encoded rows, or the
    streamed batches themselves (their batch size, shuffle buffer and seed are the spec's).

    Args:
        data (Split): the split.
        batch_size (int): rows per batch and rank (encoded rows).
        ctx (DistContext): this rank.
        shuffle (bool): a new order every epoch (encoded rows). Default: False.
        seed (int): the shuffle's seed. Default: 0.

    Returns:
        an iterable of ``MultiTaskBatch`` with ``len()`` and ``set_epoch(epoch, start_batch)``.
    """
    if isinstance(data, StreamingBatches):
        return data
    return BatchLoader(
        data, batch_size, shuffle=shuffle, seed=seed, rank=ctx.rank, world_size=ctx.world_size
    )


def training_rows(loader: Iterable[MultiTaskBatch], epoch: int, batch: int) -> str:
    """`` ; its training rows ... start with [...]`` for a message about one batch, when the
    loader can name its rows (encoded rows); else empty."""
    if not isinstance(loader, BatchLoader):
        return ""
    r = loader.rows(epoch, batch)
    return f"; its training rows (after the validation split) start with {r[:8].tolist()}"


def data_report(
    data: Optional[Split],
    ctx: DistContext,
    log: Optional[Callable[[str], None]],
    name: str,
) -> Optional[Dict[str, Any]]:
    """The encoding counts of a split, for metrics.json: a streamed one's are summed over
    the ranks (each rank encoded its own rows) and logged (they were not known before the
    first epoch)."""
    if data is None:
        return None
    report = dict(data.report)
    if isinstance(data, StreamingBatches):
        parts: List[Any] = [None] * ctx.world_size
        if ctx.world_size > 1:
            dist.all_gather_object(parts, report.get("encoded", {}))
        else:
            parts = [report.get("encoded", {})]
        total: Dict[str, Any] = {}
        for part in parts:
            total = merge_reports(total, part or {})
        report["encoded"] = total
        if log is not None:
            for line in describe_report(total):
                log(f"data {name} (one epoch, all ranks): {line}")
    return report
