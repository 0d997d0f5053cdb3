"""The trained objects of a run: the sharded train module and its optimizers, and what
they cost (parameters, table bytes per rank, the planner's estimate, memory peaks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.models.builder import build_model
from torchrec_ple.models.multitask import MultiTaskModel
from torchrec_ple.spec.schema import OptimizerSpec, Spec
from torchrec_ple.train.distributed import DistContext
from torchrec_ple.train.loss import MultiTaskTrainModule
from torchrec_ple.train.sharding import PlanEstimate, optimizer_state_per_weight, plan_and_shard
from torchrec_ple.train.weightings import build_weighting

logger = logging.getLogger("torchrec_ple")

_DENSE_OPTIM: Dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


class TrainOptimizer(CombinedOptimizer):
    """TorchRec's ``CombinedOptimizer`` (the tables' fused optimizer, the dense one) whose
    ``zero_grad`` drops the dense gradients (``set_to_none``, torch's own default) instead of
    filling them with zeros: the next backward then writes each gradient once rather than
    adding it into a zeroed one (TorchRec's wrappers default to zero-filling)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)


@dataclass
class TrainState:
    """The trained objects of a run."""

    ctx: DistContext
    model: DistributedModelParallel
    optimizer: TrainOptimizer
    transforms: FeatureTransforms
    plan_estimate: Optional[PlanEstimate] = None  # the planner's storage per rank (rank 0)


def train_module(
    spec: Spec, model: MultiTaskModel, world_size: int = 1, device_type: str = "cpu"
) -> MultiTaskTrainModule:
    """The module the trainer trains and checkpoints: the model, its masked losses (ESMM
    parents included) and the loss weighting ``train.loss_weighting`` names.

    Args:
        spec (Spec): the validated spec.
        model (MultiTaskModel): the model built from it.
        world_size (int): processes of one global batch. Default: 1.
        device_type (str): ``cpu`` or ``cuda`` (bf16 autocast). Default: ``cpu``.
    """
    names = [t.name for t in spec.tasks]
    return MultiTaskTrainModule(
        model,
        [t.type for t in spec.tasks],
        esmm_parents=[names.index(t.esmm) if t.esmm else -1 for t in spec.tasks],
        world_size=world_size,
        precision=spec.train.precision,
        device_type=device_type,
        loss_weighting=build_weighting(spec),
    )


# torch's fused (one kernel for all parameters) implementations, per device type: the same
# update as the per-parameter loop, 3-4x faster for a head's dozen small tensors on CPU.
# SGD's fused CPU kernel is no faster than its loop; Adagrad's fused kernel is CPU-only.
_FUSED_DENSE: Dict[str, Tuple[str, ...]] = {
    "adam": ("cpu", "cuda"),
    "adamw": ("cpu", "cuda"),
    "adagrad": ("cpu",),
}


def _fused_dense(opt_type: str, params: Iterable[torch.Tensor]) -> bool:
    """Whether the dense optimizer ``opt_type`` runs torch's fused kernel for ``params``:
    all of them floating point on one device type that kernel supports."""
    tensors = list(params)
    devices = {p.device.type for p in tensors}
    if len(devices) != 1:
        return False
    floats = all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in tensors)
    return floats and devices.pop() in _FUSED_DENSE.get(opt_type, ())


def _dense_optimizer(model: DistributedModelParallel, opt: OptimizerSpec) -> KeyedOptimizerWrapper:
    fused = set(model.fused_optimizer.params.keys())
    params = {n: p for n, p in model.named_parameters() if n not in fused}
    # Data-parallel tables have no fused optimizer in TorchRec: say where they go.
    tables = [n for n in params if ".embedding_bags." in n]
    if tables:
        logger.info("data-parallel tables trained by the dense %s optimizer: %s", opt.type, tables)
    kwargs: Dict[str, Any] = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    if opt.type in ("adam", "adamw", "adagrad"):
        kwargs["eps"] = opt.eps
    if _fused_dense(opt.type, params.values()):
        kwargs["fused"] = True
    factory = _DENSE_OPTIM[opt.type]
    return KeyedOptimizerWrapper(params, lambda ps: factory(ps, **kwargs))


def build_state(spec: Spec, transforms: FeatureTransforms, ctx: DistContext) -> TrainState:
    """Build, shard and wrap the model and its optimizers for a spec."""
    torch.manual_seed(spec.train.seed)
    model = build_model(spec, transforms, device="meta")
    module = train_module(spec, model, ctx.world_size, ctx.device.type)
    dmp, estimate = plan_and_shard(
        module,
        transforms.tables(),
        ctx,
        spec.train.embedding_optimizer,
        spec.train.batch_size,
        spec.train.planner,
        spec.train.precision,
    )
    optimizer = TrainOptimizer(
        [dmp.fused_optimizer, _dense_optimizer(dmp, spec.train.dense_optimizer)]
    )
    return TrainState(ctx, dmp, optimizer, transforms, estimate)


def dense_params(state: TrainState) -> List[torch.Tensor]:
    """The parameters the dense optimizer trains (all but the fused tables' weights)."""
    fused = set(state.model.fused_optimizer.params.keys())
    return [p for n, p in state.model.named_parameters() if n not in fused and p.requires_grad]


def count_params(state: TrainState) -> int:
    """Table rows x dims plus every dense parameter."""
    tables = sum(t.num_embeddings * t.dim for t in state.transforms.tables())
    dense = sum(p.numel() for n, p in state.model.named_parameters() if ".embedding_bags." not in n)
    return int(tables + dense)


def table_bytes_per_rank(
    state: TrainState,
    embedding_optimizer: Optional[OptimizerSpec] = None,
    dense_optimizer: Optional[OptimizerSpec] = None,
) -> List[int]:
    """Embedding-table bytes each rank holds under the sharding plan (fp32): the weights,
    and with an optimizer given its state (Adam 2x, Adagrad 1x, row-wise Adagrad one per
    row). Data-parallel tables are full replicas trained by the dense optimizer."""

    def per_weight(opt: Optional[OptimizerSpec], dim: int) -> float:
        if opt is None:
            return 1.0
        kind = "adam" if opt.type == "adamw" else opt.type
        return 1.0 + optimizer_state_per_weight(kind, dim)

    per_rank = [0] * state.ctx.world_size
    sizes = {t.config_name: (t.num_embeddings, t.dim) for t in state.transforms.tables()}
    for module_plan in state.model.plan.plan.values():
        for name, ps in module_plan.items():  # type: ignore[union-attr]
            spec = ps.sharding_spec
            rows, dim = sizes[name]
            if spec is None:  # data-parallel: a full replica on every rank
                full = int(rows * dim * 4 * per_weight(dense_optimizer, dim))
                per_rank = [b + full for b in per_rank]
                continue
            for shard in spec.shards:
                rank = shard.placement.rank()
                weights = int(np.prod(shard.shard_sizes))
                cols = int(shard.shard_sizes[-1])
                per_rank[rank] += int(weights * 4 * per_weight(embedding_optimizer, cols))
    return per_rank


def describe_plan(estimate: PlanEstimate) -> str:
    """One line: the planner's kernels and its storage estimate per rank against its caps."""

    def mb(values: List[int]) -> str:
        return "[" + ", ".join(f"{v / 2**20:.0f}" for v in values) + "]"

    kernels = ", ".join(f"{k.removeprefix('t_')}={v}" for k, v in sorted(estimate.kernels.items()))
    caps = ", ".join(
        f"{name} cap {cap / 2**30:.1f} GiB"
        for name, cap in (("hbm", estimate.hbm_cap), ("ddr", estimate.ddr_cap))
        if cap is not None
    )
    return (
        f"plan: {kernels}; estimate MB per rank: hbm {mb(estimate.hbm)}, ddr "
        f"{mb(estimate.ddr)} (weights, optimizer state, buffers; {caps})"
    )


def gather_floats(value: float, ctx: DistContext) -> List[float]:
    """``value`` of every rank (all ranks call)."""
    if ctx.world_size == 1:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)  # NCCL: no CPU tensors
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [float(x.item()) for x in out]


def rss_mb() -> float:
    """This process's peak resident memory, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gpu_peak_mb(ctx: DistContext) -> Optional[List[float]]:
    """Every rank's peak GPU memory allocated so far, in MiB (all ranks call); None on CPU."""
    if ctx.device.type != "cuda":
        return None
    return gather_floats(torch.cuda.max_memory_allocated(ctx.device) / 2**20, ctx)


def model_lines(spec: Spec, state: TrainState) -> List[str]:
    """What ``fit`` says of the model: parameters, table MB per rank, the sharding plan."""
    emb_opt = spec.train.embedding_optimizer
    mb = ", ".join(f"{b / 2**20:.0f}" for b in table_bytes_per_rank(state, emb_opt))
    lines = [
        f"model: {spec.model.architecture}, {count_params(state)} parameters, world size "
        f"{state.ctx.world_size}, table MB per rank [{mb}] (with {emb_opt.type} state)"
    ]
    if state.plan_estimate is not None:
        lines.append(describe_plan(state.plan_estimate))
    return lines


def memory_scalars(ctx: DistContext, state: TrainState) -> Tuple[Dict[str, float], Optional[str]]:
    """Every rank's peak RSS and (on GPUs) peak GPU memory as scalars, and on GPUs the line
    that compares them with the plan's estimate (all ranks call)."""
    rss = gather_floats(rss_mb(), ctx)
    values = {f"memory_mb/rank{r}": v for r, v in enumerate(rss)}
    gpu_peak = gpu_peak_mb(ctx)
    if gpu_peak is None:
        return values, None
    values.update({f"gpu_peak_mb/rank{r}": v for r, v in enumerate(gpu_peak)})
    plan = state.plan_estimate
    planned = ", ".join(f"{b / 2**20:.0f}" for b in plan.hbm) if plan else "?"
    line = (
        f"gpu memory: peak MB per rank [{', '.join(f'{v:.0f}' for v in gpu_peak)}]; "
        f"the plan's estimate for the tables [{planned}]"
    )
    return values, line


def train_summary(
    spec: Spec,
    ctx: DistContext,
    state: TrainState,
    steps: Any,
    data_seconds: float,
    resume_from: Optional[Path],
    early_stopped: Optional[Dict[str, Any]],
) -> Dict[str, Any]:
    """``metrics.json``'s ``train``: speed, steps, memory, the plan, skips and stops (all
    ranks call).

    Args:
        steps (EpochSteps): the loop's counts.
    """
    plan = state.plan_estimate
    table_mb = table_bytes_per_rank(
        state, spec.train.embedding_optimizer, spec.train.dense_optimizer
    )
    clipped = steps.pipeline.clipped_steps
    return {
        "samples_per_second": steps.samples * ctx.world_size / max(steps.train_seconds, 1e-9),
        "seconds": steps.train_seconds,
        "steps": steps.step,
        "epochs": spec.train.epochs,
        "world_size": ctx.world_size,
        "data_seconds": data_seconds,
        "max_rss_mb_per_rank": gather_floats(rss_mb(), ctx),
        "table_mb_per_rank": [b / 2**20 for b in table_mb],
        "gpu_peak_mb_per_rank": gpu_peak_mb(ctx),
        "plan_mb_per_rank": (
            {
                "hbm": [b / 2**20 for b in plan.hbm],
                "ddr": [b / 2**20 for b in plan.ddr],
                "kernels": plan.kernels,
            }
            if plan is not None
            else None
        ),
        "resumed_from": resume_from.name if resume_from is not None else None,
        "stopped_at_max_steps": steps.stopped,
        "skipped_steps": len(steps.skipped),
        "skipped": steps.skipped[:100],
        "early_stopped": early_stopped,
        "clip_grad_norm": spec.train.clip_grad_norm,
        "clipped_steps": int(clipped.item()) if clipped is not None else 0,
    }
