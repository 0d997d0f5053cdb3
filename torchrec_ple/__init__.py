"""torchrec-ple: multi-task recommendation (PLE and its baselines) on TorchRec.

Layout, imports pointing one way: ``spec`` (YAML schema) -> ``data`` (raw columns to
KeyedJaggedTensor batches) -> ``modules`` (config-free heads) -> ``models`` (the
multi-task model and its builder) -> ``train`` (loss, loop, checkpoint, metrics) -> ``cli``.

Importing the package imports neither torch nor torchrec: the CLI sets thread
environment variables first.
"""

__version__ = "0.1.0"
