"""Benchmarks of torchrec-ple: one command each, ``python -m benchmarks.NAME`` (see README.md).

OpenMP reads ``OMP_WAIT_POLICY`` when libgomp loads (at ``import torch``): busy-waiting
threads slow fbgemm's CPU kernels down ~40x on a shared machine, so it is set here, before any
benchmark module can import torch (each module sets it again for direct imports).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
