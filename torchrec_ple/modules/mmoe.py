"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018) and its stacked variant."""

from typing import Any, List, Optional, Tuple

from torchrec_ple.modules.base import KeyPath, MultiTaskHead, SpecReporter
from torchrec_ple.modules.extraction import ExtractionNetwork
from torchrec_ple.registry import HEADS


class _SharedExpertsOnly(ExtractionNetwork):
    """What MMoE and ML-MMoE declare alike: their experts are ``model.shared_experts``, all
    shared (``model.task_experts`` is not used)."""

    spec_args = {**MultiTaskHead.spec_args, "num_experts": "shared_experts"}

    @classmethod
    def check_spec(cls, checks: SpecReporter, path: KeyPath, model: Any) -> None:
        """The gates need at least one (shared) expert."""
        s = model.shared_experts
        if s < 1:
            hint = "MMoE experts are all shared"
            checks.err(path + ("shared_experts",), "shared_experts >= 1", str(s), hint=hint)

    @classmethod
    def matching_overrides(cls, model: Any, num_tasks: int) -> List[Tuple[str, Any]]:
        """As many experts per level as CGC / PLE have: ``shared + tasks * task_experts``."""
        n = model.shared_experts + num_tasks * model.task_experts
        return [("model.shared_experts", max(n, 1))]


@HEADS.register("mmoe")
class MMoE(_SharedExpertsOnly):
    """Multi-gate Mixture-of-Experts: ``num_experts`` experts shared by all tasks, and one
    softmax gate per task over all of them.

    Task ``k``'s output is ``sum_e softmax(W_k x + b_k)_e * expert_e(x)``. All experts' first
    layers and all gates run as one fused matmul (it is an ``ExtractionNetwork`` with one level
    and no task-specific experts). Gates are reported as ``"level0/task{k}"``, each
    ``(B, num_experts)``.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        num_experts (int): number of shared experts; at least 1. Default: 4.
        expert_dims (List[int]): layer widths of every expert. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every expert layer. Default: 0.0.

    Example::

        mmoe = MMoE(16, num_tasks=2, num_experts=3, expert_dims=[8])
        outputs, gates = mmoe.forward_with_gates(torch.randn(4, 16))
        # outputs: two (4, 8); gates["level0/task1"]: (4, 3)
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_experts: int = 4,
        expert_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        if num_experts < 1:
            raise ValueError(f"MMoE needs num_experts >= 1 for its gates to mix, got {num_experts}")
        super().__init__(
            in_features,
            num_tasks,
            num_levels=1,
            num_shared_experts=num_experts,
            num_task_experts=0,
            expert_dims=expert_dims,
            activation=activation,
            dropout=dropout,
        )


@HEADS.register("ml_mmoe")
class MultiLevelMMoE(_SharedExpertsOnly):
    """ML-MMoE: ``num_levels`` stacked MMoE levels.

    Level ``j`` (from 0) has ``num_experts`` experts shared by all tasks, one gate per task and,
    on every level but the last, one "next-level" gate; every gate is a softmax over all the
    level's experts.

    * Level 0's experts and gates read ``x``.
    * Level ``j + 1``'s experts and next-level gate read level ``j``'s next-level mixture.
    * Level ``j + 1``'s task ``k`` gate reads task ``k``'s level ``j`` mixture (so every task
      gate feeds something; the experts it weighs stay shared).
    * The last level's task mixtures are the outputs.

    This is PLE without task-specific experts (``ExtractionNetwork`` with
    ``num_task_experts=0``); the next-level gate is reported as ``"level{j}/shared"`` and task
    gates as ``"level{j}/task{k}"``, all ``(B, num_experts)``.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        num_experts (int): experts per level; at least 1. Default: 4.
        num_levels (int): number of levels; at least 1 (1 is ``MMoE``). Default: 2.
        expert_dims (List[int]): layer widths of every expert. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every expert layer. Default: 0.0.

    Example::

        ml_mmoe = MultiLevelMMoE(16, num_tasks=2, num_experts=3, num_levels=2, expert_dims=[8])
        outputs, gates = ml_mmoe.forward_with_gates(torch.randn(4, 16))
        # gates: level0/task0, level0/task1, level0/shared, level1/task0, level1/task1
    """

    spec_args = {**_SharedExpertsOnly.spec_args, "num_levels": "levels"}

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_experts: int = 4,
        num_levels: int = 2,
        expert_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        if num_experts < 1:
            raise ValueError(
                f"MultiLevelMMoE needs num_experts >= 1 for its gates to mix, got {num_experts}"
            )
        super().__init__(
            in_features,
            num_tasks,
            num_levels=num_levels,
            num_shared_experts=num_experts,
            num_task_experts=0,
            expert_dims=expert_dims,
            activation=activation,
            dropout=dropout,
        )
