"""Process groups, sharding plans and DistributedModelParallel wrapping.

The single-process trainer goes through exactly the same path as ``torchrun`` with N
processes: a gloo (CPU) or NCCL (CUDA) process group, TorchRec's planner, and
``DistributedModelParallel`` with fbgemm's fused embedding optimizer.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType

from torchrec_ple.data.transforms import TableInfo
from torchrec_ple.spec.schema import OptimizerSpec

_EMB_OPTIM = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
    "adam": EmbOptimType.ADAM,
}
_SHARDING = {
    "table_wise": ShardingType.TABLE_WISE.value,
    "row_wise": ShardingType.ROW_WISE.value,
    "column_wise": ShardingType.COLUMN_WISE.value,
    "data_parallel": ShardingType.DATA_PARALLEL.value,
}


@dataclass
class DistContext:
    """Where this process runs.

    Args:
        rank (int): global rank.
        world_size (int): number of processes.
        local_rank (int): rank on this node.
        device (torch.device): compute device of this rank.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class DropMessages(logging.Filter):
    """A logging filter dropping records that contain any of the given fragments."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self._fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self._fragments)


def quiet_known_warnings() -> None:
    """Silence the known-harmless notices of torch/TorchRec 1.8, each by its exact text."""
    # TorchRec's own DDP wrapper still passes broadcast_buffers.
    warnings.filterwarnings(
        "ignore", message=r"`broadcast_buffers` is deprecated", category=FutureWarning
    )
    # DMP state dicts hold ShardedTensors, which DCP saves fine but flags as deprecated.
    warnings.filterwarnings("ignore", message=r"Please use DTensor instead", category=FutureWarning)
    # The train pipeline traces the model with torch.fx.
    logging.getLogger("torch.fx._symbolic_trace").addFilter(
        DropMessages("is_fx_tracing will return true")
    )


def _restart_store() -> Optional[dist.Store]:
    """The process group's store after a ``torchrun --max-restarts`` restart, else None.

    torchrun's agent keeps one TCP store across restarts, and the default process group's
    keys are not scoped per restart: restarted workers may read the dead workers' gloo
    addresses and fail ("connectFullMesh failed ... Connection refused") or hang. Keys
    under a per-restart prefix keep the rounds apart. (Every agent restarts its workers
    together, so the restart count agrees across nodes.)
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=False,
        timeout=default_pg_timeout,
    )
    return dist.PrefixStore(f"torchrec_ple/restart_{restart}", store)


def init_distributed() -> DistContext:
    """Join the ``torchrun`` process group, or make a one-process group without it."""
    quiet_known_warnings()
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            store = _restart_store()
            if store is None:
                dist.init_process_group(backend=backend)
            else:
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
                dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
        else:
            # Quiet TorchRec's "Could not determine LOCAL_WORLD_SIZE" outside torchrun.
            os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


class PlannedEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """The EBC sharder, offering every sharding type on every device.

    TorchRec's default sharder offers row-wise sharding only on CUDA; fbgemm's CPU kernels
    train row-wise tables correctly (outputs equal the unsharded model), so we offer it
    on CPU too and let the planner and the per-table hints choose.
    """

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(_SHARDING.values()) + [ShardingType.TABLE_ROW_WISE.value]


def fused_params(opt: OptimizerSpec) -> Dict[str, object]:
    """fbgemm fused optimizer parameters for the embedding tables."""
    params: Dict[str, object] = {
        "optimizer": _EMB_OPTIM[opt.type],
        "learning_rate": opt.lr,
        "eps": opt.eps,
    }
    if opt.weight_decay:
        params["weight_decay"] = opt.weight_decay
    return params


def constraints(tables: List[TableInfo], world_size: int) -> Dict[str, ParameterConstraints]:
    """Planner constraints from per-table ``sharding`` hints (``auto`` leaves it free)."""
    out: Dict[str, ParameterConstraints] = {}
    for t in tables:
        if t.sharding == "auto":
            continue
        c = ParameterConstraints(sharding_types=[_SHARDING[t.sharding]])
        if t.sharding == "column_wise" and world_size > 1:
            # Without a partition size the planner keeps a whole table on one rank.
            c.min_partition = max(4, t.dim // world_size)
        out[t.config_name] = c
    return out


def shard_model(
    module: nn.Module,
    tables: List[TableInfo],
    ctx: DistContext,
    embedding_optimizer: OptimizerSpec,
    batch_size: int,
) -> DistributedModelParallel:
    """Plan with TorchRec's planner and wrap ``module`` in DistributedModelParallel.

    Args:
        module (nn.Module): the model (its EmbeddingBagCollection may be on ``meta``).
        tables (List[TableInfo]): fitted tables (for the sharding hints).
        ctx (DistContext): this process.
        embedding_optimizer (OptimizerSpec): fused fbgemm optimizer of the tables.
        batch_size (int): per-rank batch size, for the planner's estimates.

    Returns:
        DistributedModelParallel: the sharded model.
    """
    sharder = PlannedEmbeddingBagCollectionSharder(fused_params=fused_params(embedding_optimizer))
    compute_device = ctx.device.type
    topology = TopologyFactory.create_topology(
        trainer_config=TrainerConfig(
            world_size=ctx.world_size,
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)),
        ),
        kernel_config=KernelConfig(compute_device=compute_device),
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints(tables, ctx.world_size),
        storage_reservation=FixedPercentageStorageReservation(0.15),
        debug=False,
    )
    pg = dist.GroupMember.WORLD
    assert pg is not None
    plan: Optional[ShardingPlan] = planner.collective_plan(module, [sharder], pg)
    return DistributedModelParallel(
        module=module,
        env=ShardingEnv.from_process_group(pg),
        device=ctx.device,
        plan=plan,
        sharders=[sharder],
    )
