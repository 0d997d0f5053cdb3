"""Architecture names to head classes, and one uniform way to build any head."""

from typing import Dict, List, Optional, Type

from torchrec_ple.modules.base import MultiTaskHead
from torchrec_ple.modules.cross_stitch import CrossStitch
from torchrec_ple.modules.mmoe import MMoE, MultiLevelMMoE
from torchrec_ple.modules.ple import CGC, PLE
from torchrec_ple.modules.sharing import (
    AsymmetricSharing,
    CustomizedSharing,
    SharedBottom,
    SingleTask,
)
from torchrec_ple.modules.sluice import Sluice

HEADS: Dict[str, Type[MultiTaskHead]] = {
    "single_task": SingleTask,
    "shared_bottom": SharedBottom,
    "asymmetric": AsymmetricSharing,
    "customized": CustomizedSharing,
    "cross_stitch": CrossStitch,
    "sluice": Sluice,
    "mmoe": MMoE,
    "ml_mmoe": MultiLevelMMoE,
    "cgc": CGC,
    "ple": PLE,
}


def build_head(
    architecture: str,
    in_features: int,
    num_tasks: int,
    *,
    num_levels: int = 2,
    num_shared_experts: int = 1,
    num_task_experts: int = 1,
    expert_dims: Optional[List[int]] = None,
    activation: str = "relu",
    dropout: float = 0.0,
    source_task: int = 0,
    num_subspaces: int = 2,
) -> MultiTaskHead:
    """Builds the head called ``architecture`` from one uniform set of arguments.

    Every head takes ``in_features``, ``num_tasks``, ``expert_dims`` (the expert widths, or
    for heads without experts the bottom / column widths), ``activation`` and ``dropout``.
    The other arguments are used by these heads and ignored by the rest:

    ================  ==============================================================
    architecture      also uses
    ================  ==============================================================
    single_task       -
    shared_bottom     -
    asymmetric        ``source_task``
    customized        - (shared bottom and task bottoms both get ``expert_dims``)
    cross_stitch      -
    sluice            ``num_subspaces``
    mmoe              ``num_shared_experts`` as its number of experts
    ml_mmoe           ``num_shared_experts`` as experts per level, ``num_levels``
    cgc               ``num_shared_experts``, ``num_task_experts``
    ple               ``num_levels``, ``num_shared_experts``, ``num_task_experts``
    ================  ==============================================================

    Args:
        architecture (str): a key of ``HEADS``.
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``.
        num_levels (int): extraction levels (ple, ml_mmoe). Default: 2.
        num_shared_experts (int): shared experts per level (ple, cgc, mmoe, ml_mmoe).
            Default: 1.
        num_task_experts (int): experts per task per level (ple, cgc). Default: 1.
        expert_dims (Optional[List[int]]): expert / bottom / column layer widths; ``None``
            gives ``[64, 32]``. Default: None.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout probability. Default: 0.0.
        source_task (int): the task whose bottom feeds the others (asymmetric). Default: 0.
        num_subspaces (int): subspaces per layer (sluice). Default: 2.

    Returns:
        MultiTaskHead: the head.

    Example::

        head = build_head("ple", 16, 2, num_levels=2, expert_dims=[32, 8])
    """
    common = dict(expert_dims=expert_dims, activation=activation, dropout=dropout)
    if architecture in ("single_task", "shared_bottom", "customized", "cross_stitch"):
        return HEADS[architecture](in_features, num_tasks, **common)  # type: ignore[arg-type]
    if architecture == "asymmetric":
        return AsymmetricSharing(in_features, num_tasks, source_task=source_task, **common)
    if architecture == "sluice":
        return Sluice(in_features, num_tasks, num_subspaces=num_subspaces, **common)
    if architecture == "mmoe":
        return MMoE(in_features, num_tasks, num_experts=num_shared_experts, **common)
    if architecture == "ml_mmoe":
        return MultiLevelMMoE(
            in_features, num_tasks, num_experts=num_shared_experts, num_levels=num_levels, **common
        )
    if architecture == "cgc":
        return CGC(
            in_features,
            num_tasks,
            num_shared_experts=num_shared_experts,
            num_task_experts=num_task_experts,
            **common,
        )
    if architecture == "ple":
        return PLE(
            in_features,
            num_tasks,
            num_levels=num_levels,
            num_shared_experts=num_shared_experts,
            num_task_experts=num_task_experts,
            **common,
        )
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(HEADS)}")
