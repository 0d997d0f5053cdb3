"""Which device a run may use, and what the machine offers the planner.

Every decision here is a small pure function, so the CUDA path can be checked (and tested)
on a machine without a GPU: the software stack (a CUDA torch needs the CUDA build of
fbgemm-gpu), the GPU a rank gets, the memory caps the planner plans with, and whether
batches are pinned. An unusable setup is one :class:`SetupError` line, never a traceback.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from torchrec_ple.spec.errors import SpecError

GIB = 2**30
_CUDA_INSTALL = (
    "install the CUDA stack from PyTorch's cuXXX wheel index: pip uninstall -y fbgemm-gpu-cpu; "
    "pip install -r requirements/cuda.txt --index-url <cuXXX index> (see requirements/cuda.txt); "
    "or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run on CPU"
)


class SetupError(SpecError):
    """The machine, its software stack or the launch environment cannot run what was asked.

    One line like :class:`SpecError` (``<key>: expected <what>, found <what> (<hint>)``), so
    the command line prints it as ``error: ...`` with exit code 2.
    """


def fbgemm_variant() -> str:
    """The installed fbgemm-gpu build: ``cuda``, ``rocm``, ``cpu`` (or ``INTERNAL``)."""
    import fbgemm_gpu

    return str(getattr(fbgemm_gpu, "__variant__", "INTERNAL"))


def _wanted_variant() -> str:
    return "rocm" if getattr(torch.version, "hip", None) else "cuda"


def cuda_kernels_available() -> bool:
    """Whether fbgemm's GPU kernels can run: torch sees a GPU and fbgemm is its GPU build.

    Never raises (the spec check of the CUDA-only optimizers uses it); see
    :func:`compute_device_type` for the run's verdict.
    """
    return bool(torch.cuda.is_available()) and fbgemm_variant() == _wanted_variant()


def compute_device_type() -> str:
    """``cuda`` when torch sees a GPU and fbgemm-gpu is the matching GPU build, else ``cpu``.

    Raises:
        SetupError: torch sees a GPU but fbgemm-gpu is another build (e.g. ``fbgemm-gpu-cpu``
            beside a CUDA torch): the first table lookup on the GPU would find no kernel.
    """
    if not torch.cuda.is_available():
        return "cpu"
    variant, wanted = fbgemm_variant(), _wanted_variant()
    if variant == wanted or variant == "INTERNAL":  # INTERNAL: a source build, trusted
        return "cuda"
    raise SetupError(
        "fbgemm-gpu",
        f"its {wanted} build beside torch {torch.__version__}, which sees "
        f"{torch.cuda.device_count()} GPU(s)",
        f"the {variant} build",
        hint=_CUDA_INSTALL,
    )


def local_device(local_rank: int, device_type: str) -> torch.device:
    """This rank's compute device: ``cuda:LOCAL_RANK``, or the CPU.

    Raises:
        SetupError: ``LOCAL_RANK`` names no visible GPU (more processes per node than
            GPUs, or ``CUDA_VISIBLE_DEVICES`` showing each process one GPU).
    """
    if device_type != "cuda":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if not 0 <= local_rank < count:
        raise SetupError(
            "LOCAL_RANK",
            f"a visible GPU index, below torch.cuda.device_count() = {count}",
            str(local_rank),
            hint="start at most one process per visible GPU (torchrun --nproc_per_node); "
            "with CUDA_VISIBLE_DEVICES, leave every process the node's GPUs",
        )
    return torch.device("cuda", local_rank)


def host_memory_bytes() -> int:
    """The host's RAM, or the cgroup's limit when the process runs under a lower one."""
    total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def hbm_cap_bytes(device: torch.device, override_gb: Optional[float] = None) -> Optional[int]:
    """GPU memory the planner may fill on one rank: ``override_gb`` if given, else the
    device's total memory (``torch.cuda.get_device_properties``); None on CPU (no HBM)."""
    if override_gb is not None:
        return int(override_gb * GIB)
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def ddr_cap_bytes(local_world_size: int, override_gb: Optional[float] = None) -> int:
    """Host memory the planner may fill per rank: ``override_gb`` if given, else the host's
    RAM shared by the node's ``local_world_size`` ranks."""
    if override_gb is not None:
        return int(override_gb * GIB)
    return host_memory_bytes() // max(local_world_size, 1)


def pin_batches(device: torch.device) -> bool:
    """Whether batches are built off the main thread into pinned memory: only for a GPU,
    where a copy from pageable memory blocks the host; on CPU the batch is used in place."""
    return device.type == "cuda"


def serving_device(name: str) -> torch.device:
    """The device ``predict --device`` names: ``cpu`` or ``cuda[:N]`` (a GPU torch sees).

    Raises:
        SetupError: an unknown name, or a GPU this machine does not have.
    """
    text = str(name).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise SetupError("--device", "cpu, cuda or cuda:N", repr(name))
    if not torch.cuda.is_available():
        raise SetupError(
            "--device",
            "cpu on this machine (torch sees no CUDA device)",
            repr(name),
            hint=f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}",
        )
    device = torch.device(text)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise SetupError("--device", f"cuda:0 .. cuda:{count - 1}", repr(name))
    return device
