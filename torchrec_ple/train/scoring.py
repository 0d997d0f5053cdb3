"""The one scoring loop (training's evaluation and ``predict`` both run it), and the
per-task metrics of a split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from torchrec_ple.data.batch import BatchLoader, MultiTaskBatch
from torchrec_ple.data.transforms import EncodedData
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.fit_data import Split, as_split
from torchrec_ple.train.metrics import binary_auc, task_metrics
from torchrec_ple.train.pipeline import batch_iterator

if TYPE_CHECKING:
    from torchrec_ple.train.state import TrainState

B = TypeVar("B")

__all__ = ["evaluate_encoded", "predict_batches", "predict_encoded", "score_batches"]


@torch.no_grad()
def score_batches(
    batches: Iterable[B],
    score: Callable[[B], Sequence[torch.Tensor]],
    empty: Sequence[torch.Tensor],
) -> List[torch.Tensor]:
    """Run ``score`` on every batch and concatenate each of its outputs over the batches.

    Args:
        batches (Iterable[B]): the batches, in order.
        score (Callable[[B], Sequence[torch.Tensor]]): one batch's outputs, each (B_i, ...).
        empty (Sequence[torch.Tensor]): what each output is when there is no batch.

    Returns:
        List[torch.Tensor]: each output, (sum B_i, ...), in batch order.
    """
    parts: List[List[torch.Tensor]] = [[] for _ in empty]
    for batch in batches:
        for part, t in zip(parts, score(batch)):
            part.append(t)
    return [torch.cat(ts) if ts else e for ts, e in zip(parts, empty)]


@torch.no_grad()
def predict_batches(
    state: TrainState, loader: Iterable[MultiTaskBatch], num_tasks: int
) -> Dict[str, torch.Tensor]:
    """Outputs, labels and masks of every batch of ``loader``, gathered from all ranks
    (every rank must run the same number of equal-size batches)."""
    model = state.model
    model.eval()
    device = state.ctx.device

    def score(batch: MultiTaskBatch) -> Sequence[torch.Tensor]:
        _, (_, outputs, labels, masks) = model(batch.to(device, non_blocking=True))
        return outputs.float(), labels, masks

    empty = [torch.zeros(0, num_tasks, device=device) for _ in range(3)]
    columns = score_batches(batch_iterator(loader, device), score, empty)
    out = dict(zip(("outputs", "labels", "masks"), columns))
    # Gathered on the compute device (NCCL has no CPU tensors), copied to CPU once.
    if state.ctx.world_size > 1:
        for name, t in out.items():
            gathered = [torch.empty_like(t) for _ in range(state.ctx.world_size)]
            dist.all_gather(gathered, t.contiguous())
            out[name] = torch.cat(gathered)
    return {name: t.cpu() for name, t in out.items()}


def predict_encoded(
    state: TrainState, data: EncodedData, batch_size: int
) -> Dict[str, torch.Tensor]:
    """Outputs, labels and masks of every row of ``data`` (gathered from all ranks)."""
    ctx = state.ctx
    loader = BatchLoader(data, batch_size, rank=ctx.rank, world_size=ctx.world_size)
    return predict_batches(state, loader, data.labels.shape[1])


def evaluate_encoded(spec: Spec, state: TrainState, data: Split) -> Dict[str, Dict[str, float]]:
    """Per-task metrics of a split (or of encoded rows) over each task's sample space."""
    batches = as_split(spec, data, state.ctx).eval_batches()
    preds = predict_batches(state, batches, len(spec.tasks))
    names = [t.name for t in spec.tasks]
    result = task_metrics(
        preds["outputs"], preds["labels"], preds["masks"], names, [t.type for t in spec.tasks]
    )
    for k, t in enumerate(spec.tasks):
        if t.esmm:
            # ESMM's own target: pCTCVR on the entire (CTR) space, ranked by
            # log pCTCVR = logsigmoid(a) + logsigmoid(b) (no clamp, so no spurious ties).
            p = names.index(t.esmm)
            out, y, m = preds["outputs"].double(), preds["labels"], preds["masks"]
            log_ctcvr = F.logsigmoid(out[:, p]) + F.logsigmoid(out[:, k])
            result[t.name]["ctcvr_auc"] = binary_auc(log_ctcvr, y[:, p] * y[:, k], m[:, p])
    return result
