"""Process groups, sharding plans and DistributedModelParallel wrapping.

The single-process trainer goes through exactly the same path as ``torchrun`` with N
processes: a gloo (CPU) or NCCL (CUDA) process group, TorchRec's planner, and
``DistributedModelParallel`` with fbgemm's fused embedding optimizer.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
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


def _drop(logger: str, fragment: str) -> None:
    """Add a filter dropping ``fragment`` to a logger, once."""
    log = logging.getLogger(logger)
    if not any(isinstance(f, DropMessages) and fragment in f._fragments for f in log.filters):
        log.addFilter(DropMessages(fragment))


def quiet_known_warnings() -> None:
    """Silence the known-harmless notices of torch/TorchRec/fbgemm, each by its exact text.

    Idempotent (``warnings`` drops duplicate filters; loggers get each filter once); run
    when this module is imported (every command that builds or loads a model imports
    it) and again by :func:`init_distributed`, since tests may reset warning filters.
    """
    # TorchRec's own DDP wrapper still passes broadcast_buffers.
    warnings.filterwarnings(
        "ignore", message=r"`broadcast_buffers` is deprecated", category=FutureWarning
    )
    # DMP state dicts hold ShardedTensors, which DCP saves fine but flags as deprecated.
    warnings.filterwarnings("ignore", message=r"Please use DTensor instead", category=FutureWarning)
    # TorchRec's collectives (under torchrun) call c10d's old names.
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
        category=FutureWarning,
    )
    # Data-parallel tables run fbgemm's dense TBE, whose CPU kernel is itself a
    # torch::autograd::Function (DenseEmbeddingCodegen...) registered at the CPU key, not
    # the Autograd key: torch's fallback then warns of "silently incorrect behavior"
    # although the gradient comes from that Function. Its gradients equal
    # nn.EmbeddingBag's (tests/test_bad_input_catalogue.py pins it); fbgemm registers the
    # Autograd key from pytorch/FBGEMM#5886 on. Only this op's notice is dropped.
    warnings.filterwarnings(
        "ignore",
        message=r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was "
        r"not registered",
        category=UserWarning,
    )
    # The planner logs (root logger) each parameter without a sharding spec: a
    # data-parallel table is replicated and has none by design.
    _drop("root", "Sharding spec not found for")
    # Logged for every data-parallel table, although we pass no caching parameters.
    _drop("torchrec.distributed.utils", "caching params will be ignored")
    # TorchRec's model-parallel code asks torch.fx whether it is tracing, in eager runs
    # too (fit, predict); the notice is about torch.export's answer, which only export
    # relies on, and export sees the same answer with or without it.
    _drop("torch.fx._symbolic_trace", "is_fx_tracing will return true")


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


# torchrun's launcher as it appears in its command line (the console script, or -m)
_LAUNCHERS = ("torchrun", "torch.distributed.run", "torch.distributed.launch")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_launcher() -> bool:
    """Under ``torchrun`` on Linux, have this worker SIGTERMed when its launcher dies.

    torchrun starts its workers in their own session, so a ``kill -9`` of the launcher
    (or its crash) would leave them training and writing the run folder, holding its
    lock. The parent-death signal is set only when the parent is the torchrun agent:
    it fires when the thread that forked us ends, which for another parent (a pool
    thread, a test harness) may be long before that parent's process does.

    Returns:
        bool: whether the signal is now set.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    if not any(name.encode() in cmdline for name in _LAUNCHERS):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the launcher died before the signal was set
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def init_distributed() -> DistContext:
    """Join the ``torchrun`` process group, or make a one-process group without it."""
    quiet_known_warnings()
    end_with_launcher()
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


def constraints(tables: List[TableInfo], world_size: int) -> Dict[str, ParameterConstraints]:
    """Planner constraints from per-table ``sharding`` hints (see :func:`auto_sharding_types`
    for ``auto``)."""
    out: Dict[str, ParameterConstraints] = {}
    for t in tables:
        if t.sharding == "auto":
            out[t.config_name] = ParameterConstraints(
                sharding_types=auto_sharding_types(world_size)
            )
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


quiet_known_warnings()
