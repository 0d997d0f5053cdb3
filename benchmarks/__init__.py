"""Benchmarks of torchrec-ple: one command each, ``python -m benchmarks.NAME`` (see README.md).

OpenMP reads ``OMP_WAIT_POLICY`` when libgomp loads (at ``import torch``). Importing
``torchrec_ple`` first lets the package choose it as ``fit`` would (threads spin when this
node's processes x threads fit the idle cores, else they sleep: see torchrec_ple/threads.py);
a value set in the environment is kept.
"""

import torchrec_ple  # noqa: F401  (before any benchmark module imports torch)
