"""The gates' mean mixture weights over a dataset, named by task and expert (``metrics.json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

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
        rows += _add(sums, gates, batch.masks)
    return _summary(spec, state, sums, rows)


class GatesWhileScoring:
    """Records the gates while the model scores a split (the head's ``forward`` runs its
    ``forward_with_gates`` for the duration), so the gate summary of that split needs no
    pass of its own: the same rows (the first ``max_rows``, in the scoring order), the same
    model, the same numbers as :func:`gate_summary` (0.1 s less per census ``fit``).

    Args:
        spec (Spec): the spec.
        state (TrainState): the model being scored.
        batch_size (int): rows per scored batch (the split's ``eval_batch_size``).
        max_rows (int): rows summarized, as :func:`gate_summary`. Default: 50,000.

    Example::

        with GatesWhileScoring(spec, state, split.eval_batch_size) as recorder:
            metrics = evaluate_encoded(spec, state, split)
        gates = recorder.summary()
    """

    def __init__(
        self, spec: Spec, state: TrainState, batch_size: int, max_rows: int = 50_000
    ) -> None:
        self._spec, self._state = spec, state
        self._batch_size, self._max_rows = batch_size, max_rows
        module: MultiTaskTrainModule = state.model.module  # type: ignore[assignment]
        self._module, self._head = module, module.model.head
        self._masks: List[torch.Tensor] = []
        self._gates: List[Dict[str, torch.Tensor]] = []
        self._hook: Any = None

    def __enter__(self) -> GatesWhileScoring:
        if self._head.has_gates:
            head = self._head

            def forward(x: torch.Tensor) -> Any:
                outputs, gates = head.forward_with_gates(x)
                self._gates.append({k: g.detach() for k, g in gates.items()})
                return outputs

            head.forward = forward  # type: ignore[method-assign]
            self._hook = self._module.register_forward_pre_hook(self._record_masks)
        return self

    def _record_masks(self, module: Any, args: Tuple[Any, ...]) -> None:
        self._masks.append(args[0].masks)

    def __exit__(self, *exc: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            del self._head.forward  # the class's forward again

    def summary(self) -> Optional[Dict[str, Any]]:
        """The gate summary of the scored rows; None when nothing was recorded (a head
        without gates, or no batch scored)."""
        if not self._gates or len(self._gates) != len(self._masks):
            return None
        sums: Dict[str, torch.Tensor] = {}
        rows = torch.zeros((), dtype=torch.float64)
        world = self._state.ctx.world_size
        for i, (gates, masks) in enumerate(zip(self._gates, self._masks)):
            if i * self._batch_size * world >= self._max_rows:
                break
            rows += _add(sums, gates, masks)
        return _summary(self._spec, self._state, sums, rows)


def _add(sums: Dict[str, torch.Tensor], gates: Dict[str, torch.Tensor], masks: torch.Tensor) -> Any:
    """Add one batch's gate weights to ``sums``; the batch's real rows (padding rows, in
    every task's mask 0, are no samples: they count nowhere)."""
    real = (masks > 0).any(dim=1)
    for key, w in gates.items():
        sums[key] = (
            sums.get(key, torch.zeros(w.shape[1], dtype=torch.float64))
            + w.double()[real].sum(0).cpu()
        )
    return real.sum().cpu()


def _summary(
    spec: Spec, state: TrainState, sums: Dict[str, torch.Tensor], rows: torch.Tensor
) -> Dict[str, Any]:
    """Every rank's sums added up, divided by the rows, named by the head's layout."""
    model = state.model.module.model  # type: ignore[union-attr]
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
