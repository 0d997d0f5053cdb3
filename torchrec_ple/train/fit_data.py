"""The data a run trains and evaluates on: the fitted transforms and one
:class:`~torchrec_ple.data.pipeline.DataSplit` per split.

The trainer never asks where the rows live (cached in memory or streamed): a split gives
its batches (``len``, ``set_epoch``, iteration), its evaluation batches, its row counts and
its report; :func:`as_split` wraps rows encoded elsewhere (tests, ``predict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

from torchrec_ple.data.pipeline import DataSplit
from torchrec_ple.data.transforms import EncodedData, FeatureTransforms
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import DistContext

#: What evaluation and the gate summary accept: a split, or rows encoded elsewhere.
Split = Union[DataSplit, EncodedData]

__all__ = ["FitData", "Split", "as_split", "training_rows"]


def as_split(spec: Spec, data: Split, ctx: DistContext, name: str = "validation") -> DataSplit:
    """``data`` as a split on this rank (encoded rows are wrapped, cached).

    Args:
        spec (Spec): the spec (batch sizes, seed).
        data (Split): a split, or encoded rows.
        ctx (DistContext): this rank.
        name (str): the split's name, for messages. Default: ``validation``.
    """
    if isinstance(data, DataSplit):
        return data
    return DataSplit(spec, name, ctx.rank, ctx.world_size, encoded=data)


@dataclass
class FitData:
    """The fitted transforms and the splits of a run.

    Args:
        transforms (FeatureTransforms): fitted (or loaded, on resume).
        train (DataSplit): the training split.
        validation (Optional[DataSplit]): the validation split, if any.
        seconds (float): time spent reading, fitting and encoding.
    """

    transforms: FeatureTransforms
    train: DataSplit
    validation: Optional[DataSplit]
    seconds: float

    @property
    def train_rows(self) -> int:
        """Training rows over all ranks."""
        return self.train.num_rows

    @property
    def validation_rows(self) -> int:
        """Validation rows over all ranks (0 without a validation split)."""
        return self.validation.num_rows if self.validation is not None else 0

    def splits(self) -> Dict[str, Optional[DataSplit]]:
        return {"train": self.train, "validation": self.validation}

    def describe(self) -> List[str]:
        """The encoding counts known once the data is read (``data <split>: ...`` lines)."""
        return [
            line
            for split in self.splits().values()
            if split is not None and split.counted_up_front
            for line in split.describe()
        ]

    def reports(self, log: Optional[Callable[[str], None]]) -> Dict[str, Optional[Dict[str, Any]]]:
        """``metrics.json``'s ``data``: each split's report, merged over the ranks (every
        rank calls); the counts of streamed splits, known only now, are logged."""
        out: Dict[str, Optional[Dict[str, Any]]] = {}
        for name, split in self.splits().items():
            if split is None:
                out[name] = None
                continue
            report = dict(split.report)
            if log is not None and not split.counted_up_front:
                for line in split.describe(report.get("encoded", {})):
                    log(line)
            out[name] = report
        return out


def training_rows(split: DataSplit, epoch: int, batch: int) -> str:
    """`` ; its training rows ... start with [...]`` for a message about one batch, when the
    split can name its rows (cached rows); else empty."""
    rows = split.rows(epoch, batch)
    if rows is None:
        return ""
    return f"; its training rows (after the validation split) start with {rows[:8].tolist()}"
