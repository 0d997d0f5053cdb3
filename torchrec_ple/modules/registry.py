"""``build_head``: any registered head from one uniform set of keyword arguments.

The heads themselves are in ``HEADS`` (``torchrec_ple.registry``), where each head class
registers itself; this module only maps the uniform keywords onto a head's ``from_spec``.
"""

import inspect
from types import SimpleNamespace
from typing import List, Optional

from torchrec_ple.modules.base import MultiTaskHead
from torchrec_ple.registry import HEADS

__all__ = ["HEADS", "build_head"]


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

    The keywords stand for the ``model:`` keys (``num_levels`` for ``levels``,
    ``num_shared_experts`` for ``shared_experts``, ``num_task_experts`` for ``task_experts``,
    and ``expert_dims``, ``activation``, ``dropout``); each head takes the ones its
    ``spec_args`` names and ignores the rest:

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

    ``source_task`` and ``num_subspaces`` (no ``model:`` keys) go to the heads whose
    constructor takes them.

    Args:
        architecture (str): a name registered in ``HEADS``.
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

    Raises:
        ValueError: for a name that is not registered (one line naming the known ones).

    Example::

        head = build_head("ple", 16, 2, num_levels=2, expert_dims=[32, 8])
    """
    cls = HEADS.find(architecture)
    if cls is None:
        raise ValueError(HEADS.unknown(architecture))
    model = SimpleNamespace(
        levels=num_levels,
        shared_experts=num_shared_experts,
        task_experts=num_task_experts,
        expert_dims=[64, 32] if expert_dims is None else expert_dims,
        activation=activation,
        dropout=dropout,
    )
    extras = {"source_task": source_task, "num_subspaces": num_subspaces}
    takes = inspect.signature(cls).parameters
    options = {k: v for k, v in extras.items() if k in takes}
    return cls.from_spec(in_features, num_tasks, model, **options)
