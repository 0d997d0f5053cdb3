"""Sharding plans and DistributedModelParallel wrapping.

The single-process trainer goes through exactly the same path as ``torchrun`` with N
processes: TorchRec's planner and ``DistributedModelParallel`` with fbgemm's fused
embedding optimizer.

The planner sees what the run will hold: the embedding optimizer is attached to the
tables before planning (so its state is counted), the memory caps are the machine's (or
``train.planner``'s), and the kernels are those the tables allow (``compute_kernel``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
import torchrec.optim as trec_optim
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import (
    EmbeddingBagCollectionSharder,
    ShardedEmbeddingBagCollection,
)
from torchrec.distributed.model_parallel import (
    DataParallelWrapper,
    DefaultDataParallelWrapper,
    DistributedModelParallel,
)
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    PlannerError,
    ShardingOption,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import (
    CacheParams,
    ParameterSharding,
    ShardingEnv,
    ShardingPlan,
    ShardingType,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_ple.data.transforms import TableInfo
from torchrec_ple.spec.schema import OptimizerSpec, PlannerSpec
from torchrec_ple.train.device import (
    SetupError,
    ddr_cap_bytes,
    hbm_cap_bytes,
)
from torchrec_ple.train.distributed import DistContext
from torchrec_ple.train.local_dist import keep_local

_EMB_OPTIM = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
    "adam": EmbOptimType.ADAM,
}
# TorchRec's optimizer classes for the same kernels: attached to the tables before planning,
# they tell the planner how much optimizer state each table carries (and TorchRec maps them
# back to the EmbOptimType above).
_EMB_OPTIM_CLASS: Dict[str, Type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": trec_optim.Adagrad,
    "sgd": trec_optim.SGD,
    "adam": trec_optim.Adam,
}
_SHARDING = {
    "table_wise": ShardingType.TABLE_WISE.value,
    "row_wise": ShardingType.ROW_WISE.value,
    "column_wise": ShardingType.COLUMN_WISE.value,
    "data_parallel": ShardingType.DATA_PARALLEL.value,
}


class PlannedEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """The EBC sharder, offering every sharding type on every device.

    TorchRec's default sharder offers row-wise sharding only on CUDA; fbgemm's CPU kernels
    train row-wise tables correctly (outputs equal the unsharded model), so we offer it
    on CPU too and let the planner and the per-table hints choose.
    """

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(_SHARDING.values()) + [ShardingType.TABLE_ROW_WISE.value]

    def shard(
        self,
        module: EmbeddingBagCollection,
        params: Dict[str, ParameterSharding],
        env: ShardingEnv,
        device: Optional[torch.device] = None,
        module_fqn: Optional[str] = None,
    ) -> ShardedEmbeddingBagCollection:
        """TorchRec's sharded collection; with one rank, its table-wise shardings skip the
        all-to-alls (:func:`~torchrec_ple.train.local_dist.keep_local`)."""
        sharded = super().shard(module, params, env, device, module_fqn)
        keep_local(sharded, env.world_size)
        return sharded


def fused_params(opt: OptimizerSpec, device_type: Optional[str] = None) -> Dict[str, object]:
    """fbgemm fused optimizer parameters for the embedding tables.

    ``weight_decay`` is an L2 penalty for row-wise Adagrad (fbgemm applies none unless
    ``weight_decay_mode`` says so) and decoupled for Adam (fbgemm's Adam is AdamW-like);
    fbgemm's Adagrad and SGD kernels have none, so it is refused for them. fbgemm-gpu-cpu
    1.8's row-wise Adagrad ignores it whatever the mode (a looked-up row with a zero
    gradient stays put), so it is refused on CPU too.

    Args:
        opt (OptimizerSpec): ``train.embedding_optimizer``.
        device_type (Optional[str]): the device the tables train on; None skips the
            device check. Default: None.

    Raises:
        SetupError: ``weight_decay`` with ``adagrad`` or ``sgd``, or on CPU.
    """
    params: Dict[str, object] = {
        "optimizer": _EMB_OPTIM[opt.type],
        "learning_rate": opt.lr,
        "eps": opt.eps,
        "bounds_check_mode": BoundsCheckMode.NONE,
    }
    if opt.weight_decay:
        if opt.type in ("adagrad", "sgd"):
            raise SetupError(
                "train.embedding_optimizer.weight_decay",
                f"0 with embedding_optimizer {opt.type} (fbgemm's kernel has no weight decay)",
                f"{opt.weight_decay:g}",
            )
        if device_type == "cpu":
            raise SetupError(
                "train.embedding_optimizer.weight_decay",
                "0 on CPU (fbgemm's CPU kernels apply no weight decay to the tables)",
                f"{opt.weight_decay:g}",
                hint="it takes effect on GPUs; the dense optimizer's weight_decay works anywhere",
            )
        params["weight_decay"] = opt.weight_decay
        if opt.type == "rowwise_adagrad":
            params["weight_decay_mode"] = WeightDecayMode.L2
    return params


def optimizer_state_per_weight(opt_type: str, dim: int) -> float:
    """Optimizer state an embedding weight carries, in weights: Adam 2, Adagrad 1,
    row-wise Adagrad one per row (``1 / dim``), SGD 0 (as TorchRec's planner counts)."""
    return {"adam": 2.0, "adagrad": 1.0, "rowwise_adagrad": 1.0 / max(dim, 1)}.get(opt_type, 0.0)


def attach_embedding_optimizer(module: nn.Module, opt: OptimizerSpec) -> None:
    """Attach the embedding optimizer to every EmbeddingBagCollection weight of ``module``,
    as torch's ``_apply_optimizer_in_backward(..., register_hook=False)`` records it: the
    class and its arguments on the weight (DMP replaces the weights; no hook is needed).

    The planner reads them (``_optimizer_classes``, ``_optimizer_kwargs``) to count the
    optimizer's state in a table's storage; without them a plan that fits can need 3x the
    memory with Adam. Set here rather than through that function: importing
    ``torch.distributed.optim`` scripts its functional optimizers (0.14 s of every ``fit``)
    and the per-weight optimizer instances it also builds are never used.
    """
    cls = _EMB_OPTIM_CLASS[opt.type]
    for m in module.modules():
        if not isinstance(m, EmbeddingBagCollection):
            continue
        for p in m.parameters():  # attached once: a module planned again starts afresh
            p._optimizer_classes = [cls]  # type: ignore[attr-defined]
            p._optimizer_kwargs = [{"lr": opt.lr}]  # type: ignore[attr-defined]


def auto_sharding_types(world_size: int) -> List[str]:
    """What the planner may choose for a table left at ``sharding: auto``.

    One process holds every table whole whatever the type: table-wise, which skips the
    row-wise bucketizing and input splits it would not need. With more, any model-parallel
    type, but never data-parallel unless asked for: TorchRec trains data-parallel tables
    with the dense optimizer, so the plan would silently change a table's optimizer.
    """
    if world_size == 1:
        return [ShardingType.TABLE_WISE.value]
    return [
        ShardingType.TABLE_WISE.value,
        ShardingType.ROW_WISE.value,
        ShardingType.COLUMN_WISE.value,
        ShardingType.TABLE_ROW_WISE.value,
    ]


def compute_kernels(table: TableInfo, device_type: str) -> Optional[List[str]]:
    """The fbgemm kernels a table may use on ``device_type``: its ``compute_kernel``, or
    for ``auto`` the fused ones the device offers (HBM, UVM caching, UVM); None for a
    data-parallel table (TorchRec's dense kernel).

    Raises:
        SetupError: a UVM kernel asked for on CPU.
    """
    if table.sharding == "data_parallel":
        return None
    offered = [EmbeddingComputeKernel.FUSED.value]
    if device_type == "cuda":
        offered += [
            EmbeddingComputeKernel.FUSED_UVM_CACHING.value,
            EmbeddingComputeKernel.FUSED_UVM.value,
        ]
    if table.compute_kernel == "auto":
        return offered
    if table.compute_kernel not in offered:
        raise SetupError(
            f"table '{table.name}': embedding.compute_kernel",
            f"one of auto, {', '.join(offered)} on {device_type} (the UVM kernels need CUDA)",
            repr(table.compute_kernel),
            hint=f"e.g. --set features[i].embedding.compute_kernel=auto for {table.features[0]}",
        )
    return [table.compute_kernel]


def constraints(
    tables: List[TableInfo], world_size: int, device_type: str = "cpu"
) -> Dict[str, ParameterConstraints]:
    """Planner constraints from the per-table hints: ``sharding`` (see
    :func:`auto_sharding_types` for ``auto``), ``compute_kernel`` (see
    :func:`compute_kernels`) and ``cache_load_factor``."""
    out: Dict[str, ParameterConstraints] = {}
    for t in tables:
        types = auto_sharding_types(world_size) if t.sharding == "auto" else [_SHARDING[t.sharding]]
        c = ParameterConstraints(
            sharding_types=types, compute_kernels=compute_kernels(t, device_type)
        )
        if t.cache_load_factor is not None:
            c.cache_params = CacheParams(load_factor=t.cache_load_factor)
        if t.sharding == "column_wise" and world_size > 1:
            # Without a partition size the planner keeps a whole table on one rank.
            c.min_partition = max(4, t.dim // world_size)
        out[t.config_name] = c
    return out


@dataclass
class PlanEstimate:
    """The planner's storage estimate of the chosen plan, per rank, in bytes: the tables'
    weights, their optimizer state and the kernels' input/output buffers.

    Args:
        hbm (List[int]): GPU memory per rank (0 on CPU).
        ddr (List[int]): host memory per rank.
        kernels (Dict[str, str]): table (TorchRec name) -> compute kernel chosen.
        hbm_cap (Optional[int]): the GPU memory per rank the planner was given.
        ddr_cap (Optional[int]): the host memory per rank the planner was given.
    """

    hbm: List[int]
    ddr: List[int]
    kernels: Dict[str, str] = field(default_factory=dict)
    hbm_cap: Optional[int] = None
    ddr_cap: Optional[int] = None

    @classmethod
    def from_options(cls, options: List[ShardingOption], world_size: int) -> PlanEstimate:
        hbm, ddr = [0] * world_size, [0] * world_size
        for so in options:
            for shard in so.shards:
                if shard.rank is None or shard.storage is None:
                    continue
                hbm[shard.rank] += int(shard.storage.hbm)
                ddr[shard.rank] += int(shard.storage.ddr)
        return cls(hbm, ddr, {so.name: so.compute_kernel for so in options})


class _RecordPlan:
    """A planner callback keeping the sharding options of the plan it chose."""

    def __init__(self) -> None:
        self.options: Optional[List[ShardingOption]] = None

    def __call__(self, plan: List[ShardingOption]) -> List[ShardingOption]:
        self.options = plan
        return plan


def plan_sharding(
    module: nn.Module,
    tables: List[TableInfo],
    ctx: DistContext,
    embedding_optimizer: OptimizerSpec,
    batch_size: int,
    planner_spec: Optional[PlannerSpec] = None,
    sharder: Optional[EmbeddingBagCollectionSharder] = None,
) -> Tuple[ShardingPlan, Optional[PlanEstimate]]:
    """Plan the sharding of ``module``'s tables with TorchRec's planner (on rank 0, shared).

    Args:
        module (nn.Module): the model, its EmbeddingBagCollection on ``meta``.
        tables (List[TableInfo]): fitted tables (for the per-table hints).
        ctx (DistContext): this process.
        embedding_optimizer (OptimizerSpec): fused optimizer of the tables (its state is
            counted in the plan's storage).
        batch_size (int): per-rank batch size, for the planner's estimates.
        planner_spec (Optional[PlannerSpec]): ``train.planner`` memory caps. Default: the
            machine's.
        sharder (Optional[EmbeddingBagCollectionSharder]): Default: the project's.

    Returns:
        Tuple[ShardingPlan, Optional[PlanEstimate]]: the plan, and its storage estimate
        (rank 0 only: the other ranks receive the plan alone).

    Raises:
        SetupError: no plan fits the memory caps, or a kernel the device lacks.
    """
    caps = planner_spec or PlannerSpec()
    if sharder is None:
        sharder = PlannedEmbeddingBagCollectionSharder(
            fused_params=fused_params(embedding_optimizer, ctx.device.type)
        )
    attach_embedding_optimizer(module, embedding_optimizer)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    hbm, ddr = (
        hbm_cap_bytes(ctx.device, caps.hbm_cap_gb),
        ddr_cap_bytes(local_world, caps.ddr_cap_gb),
    )
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=ctx.world_size,
            local_world_size=local_world,
            hbm_cap_bytes=hbm,
            ddr_cap_bytes=ddr,
        ),
        kernel_config=KernelConfig(compute_device=ctx.device.type),
    )
    record = _RecordPlan()
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints(tables, ctx.world_size, ctx.device.type),
        storage_reservation=FixedPercentageStorageReservation(0.15),
        debug=False,
        callbacks=[record],
    )
    pg = dist.GroupMember.WORLD
    assert pg is not None
    try:
        plan: ShardingPlan = planner.collective_plan(module, [sharder], pg)
    except PlannerError as e:
        gib = lambda b: "default" if b is None else f"{b / 2**30:.1f} GiB"  # noqa: E731
        raise SetupError(
            "train.planner",
            f"a sharding plan within {gib(hbm)} GPU and {gib(ddr)} host memory per rank",
            str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__,
            hint="lower table sizes or dims, use more ranks, a compute_kernel with host "
            "memory (fused_uvm_caching), or raise train.planner.hbm_cap_gb/ddr_cap_gb",
        ) from None
    estimate = None
    if record.options is not None:
        estimate = PlanEstimate.from_options(record.options, ctx.world_size)
        estimate.hbm_cap, estimate.ddr_cap = hbm, ddr
    return plan, estimate


class SingleProcessWrapper(DataParallelWrapper):
    """DistributedModelParallel's data-parallel wrapper for a one-process group: the dense
    part moved to the device, without DistributedDataParallel.

    With one rank DDP has nothing to average, yet it still hooks every forward and backward
    and all-reduces its gradient buckets. Checkpoints are unchanged: DMP's ``state_dict``
    and ``named_parameters`` strip DDP's ``module.`` prefix, so a one-process checkpoint
    resumes on N processes and back.
    """

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp._dmp_wrapped_module = dmp._dmp_wrapped_module.to(device)


def plan_and_shard(
    module: nn.Module,
    tables: List[TableInfo],
    ctx: DistContext,
    embedding_optimizer: OptimizerSpec,
    batch_size: int,
    planner_spec: Optional[PlannerSpec] = None,
    precision: str = "fp32",
) -> Tuple[DistributedModelParallel, Optional[PlanEstimate]]:
    """Plan (:func:`plan_sharding`) and wrap ``module`` in DistributedModelParallel.

    Args:
        module (nn.Module): the model (its EmbeddingBagCollection may be on ``meta``).
        tables (List[TableInfo]): fitted tables (for the per-table hints).
        ctx (DistContext): this process.
        embedding_optimizer (OptimizerSpec): fused fbgemm optimizer of the tables.
        batch_size (int): per-rank batch size, for the planner's estimates.
        planner_spec (Optional[PlannerSpec]): ``train.planner``. Default: the machine's caps.
        precision (str): ``train.precision``; ``bf16`` on GPUs all-reduces the dense
            gradients in bfloat16 (DDP's compression hook). Default: ``fp32``.

    Returns:
        Tuple[DistributedModelParallel, Optional[PlanEstimate]]: the sharded model and the
        plan's storage estimate (rank 0).
    """
    sharder = PlannedEmbeddingBagCollectionSharder(
        fused_params=fused_params(embedding_optimizer, ctx.device.type)
    )
    plan, estimate = plan_sharding(
        module, tables, ctx, embedding_optimizer, batch_size, planner_spec, sharder
    )
    pg = dist.GroupMember.WORLD
    assert pg is not None
    wrapper: DataParallelWrapper = (
        DefaultDataParallelWrapper(allreduce_comm_precision="bf16")
        if precision == "bf16" and ctx.device.type == "cuda"
        else DefaultDataParallelWrapper()
    )
    if ctx.world_size == 1:
        wrapper = SingleProcessWrapper()
    dmp = DistributedModelParallel(
        module=module,
        env=ShardingEnv.from_process_group(pg),
        device=ctx.device,
        plan=plan,
        sharders=[sharder],
        data_parallel_wrapper=wrapper,
    )
    return dmp, estimate


def shard_model(
    module: nn.Module,
    tables: List[TableInfo],
    ctx: DistContext,
    embedding_optimizer: OptimizerSpec,
    batch_size: int,
    planner_spec: Optional[PlannerSpec] = None,
    precision: str = "fp32",
) -> DistributedModelParallel:
    """:func:`plan_and_shard` without the estimate: the sharded model."""
    return plan_and_shard(
        module, tables, ctx, embedding_optimizer, batch_size, planner_spec, precision
    )[0]
