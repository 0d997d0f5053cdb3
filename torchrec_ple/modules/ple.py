"""Progressive Layered Extraction (Tang et al., RecSys 2020): CGC levels stacked into PLE."""

from typing import Any, List, Optional

from torchrec_ple.modules.base import KeyPath, SpecReporter
from torchrec_ple.modules.extraction import ExtractionNetwork, check_task_gates
from torchrec_ple.registry import HEADS

__all__ = ["CGC", "PLE", "ExtractionNetwork"]


class PLE(ExtractionNetwork):
    """Progressive Layered Extraction: ``num_levels`` CGC levels with progressive routing.

    Task ``k``'s gate at level ``j`` mixes only task ``k``'s and the shared experts; a task
    never consults another task's experts. Shared gates (every level but the last) mix all
    experts and feed the next level's shared experts. See ``ExtractionNetwork`` for the exact
    routing and parameter layout. ``num_levels=1`` is ``CGC``.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        num_levels (int): number of extraction levels; the paper uses 2. Default: 2.
        num_shared_experts (int): shared experts per level. Default: 1.
        num_task_experts (int): experts per task per level. Default: 1.
        expert_dims (List[int]): layer widths of every expert. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every expert layer. Default: 0.0.

    Example::

        ple = PLE(16, num_tasks=2, expert_dims=[32, 8])
        ctr, cvr = ple(torch.randn(4, 16))  # each (4, 8)
    """

    @classmethod
    def check_spec(cls, checks: SpecReporter, path: KeyPath, model: Any) -> None:
        """Every task gate needs an expert, and below the last level the shared gate too."""
        if check_task_gates(checks, path, model) and model.levels > 1 and model.shared_experts < 1:
            checks.err(
                path + ("shared_experts",),
                "shared_experts >= 1 for ple with levels > 1",
                str(model.shared_experts),
                hint="the shared gate of a lower level would be a gate with no expert",
            )


@HEADS.register("cgc")
class CGC(PLE):
    """Customized Gate Control: a single-level PLE, ``CGC(...) == PLE(..., num_levels=1)``.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        num_shared_experts (int): shared experts. Default: 1.
        num_task_experts (int): experts per task. Default: 1.
        expert_dims (List[int]): layer widths of every expert. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every expert layer. Default: 0.0.

    Example::

        cgc = CGC(16, num_tasks=2, num_shared_experts=2, expert_dims=[8])
        outputs, gates = cgc.forward_with_gates(torch.randn(4, 16))
        # gates: "level0/task0" and "level0/task1", each (4, 3)
    """

    spec_args = {k: v for k, v in PLE.spec_args.items() if k != "num_levels"}

    @classmethod
    def check_spec(cls, checks: SpecReporter, path: KeyPath, model: Any) -> None:
        """Every task gate needs an expert (``model.levels`` is not used)."""
        check_task_gates(checks, path, model)

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            in_features,
            num_tasks,
            num_levels=1,
            num_shared_experts=num_shared_experts,
            num_task_experts=num_task_experts,
            expert_dims=expert_dims,
            activation=activation,
            dropout=dropout,
        )


# After CGC: names are listed in registration order, and the spec's order is cgc, ple.
HEADS.register("ple")(PLE)
