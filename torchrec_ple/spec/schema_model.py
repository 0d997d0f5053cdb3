"""The ``tasks:`` and ``model:`` sections of a spec: prediction tasks and the multi-task head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class SampleSpaceSpec:
    """Declarative condition on one column selecting a task's sample space.

    Exactly one of ``equals``, ``in`` (``in_`` here) or ``not_null`` is set.
    Rows whose label is missing are always outside the sample space.

    Args:
        column (str): the column tested.
        equals (Any): keep rows where ``column == equals``.
        in_ (Optional[List[Any]]): keep rows where ``column`` is one of these
            (YAML key ``in``).
        not_null (bool): keep rows where ``column`` is present.
    """

    column: str
    equals: Any = None
    in_: Optional[List[Any]] = None
    not_null: bool = False


@dataclass
class WeightSpec:
    """Loss weight schedule ``w(t) = initial * decay ** t``.

    Args:
        initial (float): ``w_0``. Default: 1.0.
        decay (float): ``gamma``, in (0, 1]. Default: 1.0 (constant).
    """

    initial: float = 1.0
    decay: float = 1.0


@dataclass
class TaskSpec:
    """One prediction task.

    Args:
        name (str): task name.
        label (str): label column.
        type (str): ``binary`` (logit output, BCE) or ``regression`` (value, MSE).
        positive (Optional[List[Any]]): for ``binary`` tasks whose label column holds
            other values: the values counted as 1; everything else present is 0.
        sample_space (Optional[SampleSpaceSpec]): rows in the task's sample space;
            default: rows where the label is present.
        weight (WeightSpec): loss weight schedule.
        on_invalid (str): a binary label outside {0, 1}: ``error`` (default) or ``drop``
            (the row leaves this task's sample space; counted). Missing labels (null, NaN)
            are outside the sample space by definition.
        esmm (Optional[str]): ESMM's entire-space option (Ma et al. 2018): the name of
            a binary CTR-like task. This task's output stays its own probability (CVR,
            evaluated on its sample space), but it is trained through
            ``CTCVR = CTR x CVR`` against ``label(esmm task) * label(this task)`` on
            every row of the named task's sample space.
    """

    name: str
    label: str
    type: str = "binary"
    positive: Optional[List[Any]] = None
    sample_space: Optional[SampleSpaceSpec] = None
    weight: WeightSpec = field(default_factory=WeightSpec)
    on_invalid: str = "error"
    esmm: Optional[str] = None


@dataclass
class ModelSpec:
    """Multi-task head.

    Args:
        architecture (str): a head registered in ``HEADS``. Default: ``ple``.
        levels (int): extraction levels (PLE, ML-MMoE). Default: 2.
        shared_experts (int): shared experts per level. Default: 1.
        task_experts (int): experts per task per level. Default: 1.
        expert_dims (List[int]): hidden sizes of each expert MLP. Default: ``[64, 32]``.
        tower_dims (List[int]): hidden sizes of each task tower. Default: ``[32]``.
        activation (str): hidden activation. Default: ``relu``.
        dropout (float): dropout after hidden layers. Default: 0.0.
    """

    architecture: str = "ple"
    levels: int = 2
    shared_experts: int = 1
    task_experts: int = 1
    expert_dims: List[int] = field(default_factory=lambda: [64, 32])
    tower_dims: List[int] = field(default_factory=lambda: [32])
    activation: str = "relu"
    dropout: float = 0.0
