"""Config-free multi-task modules: experts, gates, extraction levels, heads and towers.

Nothing here reads config files. Every head registers itself in ``HEADS`` (from
``torchrec_ple.registry``) with the ``model:`` keys it is built from; ``build_head`` maps
uniform keyword arguments to any of them.
"""

# First: the built-in heads register in the order of `heads` (the order of their names).
from torchrec_ple.modules import heads  # noqa: F401

# isort: split
from torchrec_ple.modules.base import MultiTaskHead
from torchrec_ple.modules.cross_stitch import CrossStitch
from torchrec_ple.modules.extraction import ExtractionNetwork
from torchrec_ple.modules.mlp import ACTIVATIONS, MLP, StackedLinear, StackedMLP
from torchrec_ple.modules.mmoe import MMoE, MultiLevelMMoE
from torchrec_ple.modules.ple import CGC, PLE
from torchrec_ple.modules.registry import HEADS, build_head
from torchrec_ple.modules.sharing import (
    AsymmetricSharing,
    CustomizedSharing,
    SharedBottom,
    SingleTask,
)
from torchrec_ple.modules.sluice import Sluice
from torchrec_ple.modules.towers import TaskTowers

__all__ = [
    "ACTIVATIONS",
    "AsymmetricSharing",
    "CGC",
    "CrossStitch",
    "CustomizedSharing",
    "ExtractionNetwork",
    "HEADS",
    "MLP",
    "MMoE",
    "MultiLevelMMoE",
    "MultiTaskHead",
    "PLE",
    "SharedBottom",
    "SingleTask",
    "Sluice",
    "StackedLinear",
    "StackedMLP",
    "TaskTowers",
    "build_head",
]
