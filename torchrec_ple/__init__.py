"""torchrec-ple: multi-task recommendation (PLE and its baselines) on TorchRec.

Layout, imports pointing one way: ``spec`` (YAML schema) -> ``data`` (raw columns to
KeyedJaggedTensor batches) -> ``modules`` (config-free heads) -> ``models`` (the
multi-task model and its builder) -> ``train`` (loss, loop, checkpoint, metrics) -> ``cli``.

Importing the package imports neither torch nor torchrec: the CLI sets thread
environment variables first.
"""

from torchrec_ple.threads import configure_threads as _configure_threads

# OMP_WAIT_POLICY is read when libgomp loads (at `import torch`), so it is chosen here,
# before anything of the package can import torch: threads spin between parallel regions
# unless the node's processes x threads outnumber its cores (see torchrec_ple.threads).
# A value set in the environment is kept; once torch is imported this does nothing.
_configure_threads()

__version__ = "0.1.0"
