"""torchrec-ple: multi-task recommendation (PLE and its baselines) on TorchRec.

Layout, imports pointing one way: ``spec`` (YAML schema) -> ``data`` (raw columns to
KeyedJaggedTensor batches) -> ``modules`` (config-free heads) -> ``models`` (the
multi-task model and its builder) -> ``train`` (loss, loop, checkpoint, metrics) -> ``cli``.

Importing the package imports neither torch nor torchrec: the CLI sets thread
environment variables first.
"""

import os as _os

# fbgemm's CPU kernels slow down up to 40x under CPU contention with OpenMP's default
# busy-waiting. The variable is read when libgomp loads (at `import torch`), so it only
# helps if this package is imported first; the CLI and `make` set it in any case.
if "torch" not in __import__("sys").modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
