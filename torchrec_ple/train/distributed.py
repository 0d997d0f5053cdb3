"""Process groups: one code path for one process and for ``torchrun`` with N.

A gloo (CPU) or NCCL (CUDA) process group, the device of this rank, the group's timeout,
restarts under ``torchrun --max-restarts``, and the library warnings that say nothing to a
user. Planning and wrapping the model in DistributedModelParallel: :mod:`.sharding`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from torchrec_ple.train.device import (
    compute_device_type,
    local_device,
)


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
    # nn.EmbeddingBag's (tests/test_notices_and_launcher.py pins it); fbgemm registers the
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


quiet_known_warnings()
