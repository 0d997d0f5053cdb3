"""The gates' mean mixture weights over a dataset, named by task and expert (``metrics.json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable

import torch
import torch.distributed as dist

from torchrec_ple.data.batch import MultiTaskBatch
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.fit_data import Split, as_split
from torchrec_ple.train.loss import MultiTaskTrainModule

if TYPE_CHECKING:
    from torchrec_ple.train.trainer import TrainState


@torch.no_grad()
def gate_summary(
    spec: Spec,
    state: TrainState,
    data: Split,
    max_rows: int = 50_000,
) -> Dict[str, Any]:
    """Mean softmax weight of every gate on (up to ``max_rows`` of) ``data``.

    Returns:
        Dict[str, Any]: ``{"level{j}/{task|shared}": {"experts": [...], "mean": [...]}}``,
        the experts named by the head's ``gate_layout``; empty for heads without gates
        (``has_gates``), which are not run.
    """
    module: MultiTaskTrainModule = state.model.module  # type: ignore[assignment]
    model = module.model
    if not model.head.has_gates:
        return {}
    model.eval()
    split = as_split(spec, data, state.ctx)
    bs = split.eval_batch_size
    loader: Iterable[MultiTaskBatch] = split.eval_batches()
    sums: Dict[str, torch.Tensor] = {}
    rows = torch.zeros((), dtype=torch.float64)
    for i, batch in enumerate(loader):
        if i * bs * state.ctx.world_size >= max_rows:
            break
        batch = batch.to(state.ctx.device)
        _, gates = model.head.forward_with_gates(model.features(batch.dense, batch.sparse))
        # padding rows (every task's mask 0) are no samples: they count nowhere
        real = (batch.masks > 0).any(dim=1)
        for key, w in gates.items():
            sums[key] = (
                sums.get(key, torch.zeros(w.shape[1], dtype=torch.float64))
                + w.double()[real].sum(0).cpu()
            )
        rows += real.sum().cpu()
    if state.ctx.world_size > 1:
        # summed on the compute device: NCCL has no CPU tensors
        stacked = torch.cat([rows.reshape(1), *sums.values()]).to(state.ctx.device)
        dist.all_reduce(stacked)
        stacked = stacked.cpu()
        rows = stacked[0]
        offset = 1
        for key, total in sums.items():
            sums[key] = stacked[offset : offset + len(total)]
            offset += len(total)
    # the head knows which experts each of its gates mixes
    layout = model.head.gate_layout([t.name for t in spec.tasks])
    gates_out: Dict[str, Any] = {}
    for key, total in sums.items():
        label = key.split("/")[0] + "/" + _gate_owner(spec, key)
        gates_out[label] = {"experts": layout[key], "mean": (total / rows).tolist()}
    return gates_out


def _gate_owner(spec: Spec, key: str) -> str:
    who = key.split("/", 1)[1]
    return who if who == "shared" else spec.tasks[int(who.removeprefix("task"))].name
