"""Process groups, sharding plans and DistributedModelParallel wrapping.

The single-process trainer goes through exactly the same path as ``torchrun`` with N
processes: a gloo (CPU) or NCCL (CUDA) process group, TorchRec's planner, and
``DistributedModelParallel`` with fbgemm's fused embedding optimizer.

The planner sees what the run will hold: the embedding optimizer is attached to the
tables before planning (so its state is counted), the memory caps are the machine's (or
``train.planner``'s), and the kernels are those the tables allow (``compute_kernel``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
import torchrec.optim as trec_optim
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
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
from torchrec.distributed.types import CacheParams, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_ple.data.transforms import TableInfo
from torchrec_ple.spec.schema import OptimizerSpec, PlannerSpec
from torchrec_ple.train.device import (
    SetupError,
    compute_device_type,
    ddr_cap_bytes,
    hbm_cap_bytes,
    local_device,
)

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


DEFAULT_TIMEOUT_S = 1800.0
# the timeout the default process group was made with (for the timeout's error line)
_group_timeout_s: Optional[float] = None


def group_kwargs(device: torch.device, timeout_s: Optional[float] = None) -> Dict[str, Any]:
    """``init_process_group`` arguments for a rank computing on ``device``.

    NCCL for a GPU, with ``device_id`` (the group is bound to this rank's GPU, so its
    barriers and communicators never guess one), gloo for the CPU; both with the
    ``train.dist_timeout_s`` timeout (NCCL's own default is 10 minutes).
    """
    kwargs: Dict[str, Any] = {
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "timeout": timedelta(seconds=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s),
    }
    if device.type == "cuda":
        kwargs["device_id"] = device
    return kwargs


def init_distributed(timeout_s: Optional[float] = None) -> DistContext:
    """Join the ``torchrun`` process group, or make a one-process group without it.

    The device is settled first: CUDA only with the CUDA build of fbgemm-gpu, this rank's
    GPU checked against the visible ones and made current before the group exists.

    Args:
        timeout_s (Optional[float]): how long a collective may wait for the other ranks
            (``train.dist_timeout_s``). Default: 1800 s. Ignored when the group exists.

    Raises:
        SetupError: an unusable stack or ``LOCAL_RANK`` (see :mod:`torchrec_ple.train.device`).
    """
    global _group_timeout_s
    quiet_known_warnings()
    end_with_launcher()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = local_device(local_rank, compute_device_type())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = group_kwargs(device, timeout_s)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            store = _restart_store()
            if store is None:
                dist.init_process_group(**kwargs)
            else:
                rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
                dist.init_process_group(**kwargs, store=store, rank=rank, world_size=world)
        else:
            # Quiet TorchRec's "Could not determine LOCAL_WORLD_SIZE" outside torchrun.
            os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
            dist.init_process_group(**kwargs, store=dist.HashStore(), rank=0, world_size=1)
        _group_timeout_s = kwargs["timeout"].total_seconds()
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


# gloo: "Timed out waiting 1800000ms for recv operation"; NCCL (blocking wait): "Watchdog
# caught collective operation timeout"
_TIMEOUT_WORDS = ("timed out waiting", "collective operation timeout")


def collective_timeout_message(e: BaseException) -> Optional[str]:
    """The one line for a collective that timed out (gloo, or NCCL with blocking waits);
    None for any other error. NCCL's watchdog otherwise ends the process itself, logging
    ``Watchdog caught collective operation timeout``."""
    if not isinstance(e, RuntimeError) or not dist.is_initialized():
        return None
    text = str(e).lower()
    if not any(w in text for w in _TIMEOUT_WORDS):
        return None
    waited = f"{_group_timeout_s:g} s" if _group_timeout_s is not None else "its timeout"
    return (
        f"rank {dist.get_rank()}: a collective waited {waited} for the other ranks and timed "
        "out (train.dist_timeout_s): another rank failed, hung or was slower (e.g. rank 0 "
        "fitting the transforms of streamed data); check the other ranks' errors, or raise "
        "train.dist_timeout_s"
    )


class PlannedEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """The EBC sharder, offering every sharding type on every device.

    TorchRec's default sharder offers row-wise sharding only on CUDA; fbgemm's CPU kernels
    train row-wise tables correctly (outputs equal the unsharded model), so we offer it
    on CPU too and let the planner and the per-table hints choose.
    """

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(_SHARDING.values()) + [ShardingType.TABLE_ROW_WISE.value]


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
    """Attach the embedding optimizer to every EmbeddingBagCollection weight of ``module``
    (TorchRec's ``apply_optimizer_in_backward``, without hooks: DMP replaces the weights).

    The planner reads it (``_optimizer_classes``) to count the optimizer's state in a
    table's storage; without it a plan that fits can need 3x the memory with Adam.
    """
    cls = _EMB_OPTIM_CLASS[opt.type]
    for m in module.modules():
        if not isinstance(m, EmbeddingBagCollection):
            continue
        params = list(m.parameters())
        for p in params:  # attached once: a module planned again starts afresh
            for attr in ("_in_backward_optimizers", "_optimizer_classes", "_optimizer_kwargs"):
                if hasattr(p, attr):
                    delattr(p, attr)
        _apply_optimizer_in_backward(cls, params, {"lr": opt.lr}, register_hook=False)


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


quiet_known_warnings()
