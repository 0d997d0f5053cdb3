"""The interface every multi-task head implements, and how a head declares itself to the
registry (the model keys it is built from, its spec checks, its gate layout)."""

from typing import Any, ClassVar, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import nn

#: A key path in the spec, e.g. ``("model", "shared_experts")``.
KeyPath = Tuple[Union[str, int], ...]


class SpecReporter(Protocol):
    """What a head's ``check_spec`` reports problems through (the spec checker).

    ``err(path, expected, found, hint=...)`` records one located error: the key path, what
    was expected, what was found and an optional hint; the checker adds file and line.
    """

    def err(
        self,
        path: KeyPath,
        expected: str,
        found: Optional[str] = None,
        *,
        did_you_mean: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None: ...


class MultiTaskHead(nn.Module):
    """Base class of the config-free multi-task heads.

    A head maps one shared input representation to one representation per task; task towers
    (see ``TaskTowers``) turn those into predictions.

    Contract of a subclass:

    * ``forward(x)`` takes ``x`` of shape ``(B, in_features)`` and returns a Python list of
      ``num_tasks`` tensors, the k-th of shape ``(B, output_dims[k])``. Any batch size works,
      1 included. The list is a real list (not an unbound tensor), so a caller may iterate it
      under ``torch.fx.symbolic_trace``.
    * ``output_dims`` gives each task's representation width.
    * ``forward_with_gates(x)`` returns ``(outputs, gates)``. Gated heads (PLE, CGC, MMoE,
      ML-MMoE) fill ``gates`` with the softmax weights of every gate, keyed
      ``"level{j}/task{k}"`` and ``"level{j}/shared"`` (levels and tasks counted from 0), each
      of shape ``(B, n_experts_seen)``. Expert order within a task gate: the task's own
      experts, then the shared experts. Within a shared gate: task 0's experts, task 1's
      experts, ..., then the shared experts. Heads without gates return an empty dict.

    A head class is also its own entry in the registry (``model.architecture``): it registers
    with ``@HEADS.register(name)`` (``torchrec_ple.registry``) and declares, at class level,

    * ``spec_args``: constructor keyword -> the ``model:`` key it is built from (the keys
      the head uses); ``from_spec`` builds the head from them. The constructor itself takes
      explicit arguments only.
    * ``check_spec``: what it needs of those keys beyond their types (expert counts), in
      the spec's error format.
    * ``has_gates`` and ``gate_layout``: whether it reports gates, and the experts each one
      mixes, named by task.
    * ``matching_overrides``: how ``compare --match-experts`` evens its expert budget.

    Args:
        in_features (int): width ``D`` of the input.
        num_tasks (int): number of tasks ``K``; at least 1.

    Example::

        head = PLE(16, num_tasks=2, expert_dims=[8])  # any subclass
        outputs, gates = head.forward_with_gates(torch.randn(4, 16))
        assert [y.shape[1] for y in outputs] == head.output_dims
    """

    __jit_unused_properties__ = ["output_dims", "num_tasks", "in_features"]

    #: Constructor keyword -> the ``model:`` key (of the spec's ``ModelSpec``) it comes from.
    spec_args: ClassVar[Dict[str, str]] = {
        "expert_dims": "expert_dims",
        "activation": "activation",
        "dropout": "dropout",
    }
    #: Whether ``forward_with_gates`` reports gates (then ``gate_layout`` names their experts).
    has_gates: ClassVar[bool] = False

    @classmethod
    def model_keys(cls) -> List[str]:
        """The ``model:`` keys this head is built from (``tower_dims`` is every model's)."""
        return list(cls.spec_args.values())

    @classmethod
    def from_spec(
        cls, in_features: int, num_tasks: int, model: Any, **options: Any
    ) -> "MultiTaskHead":
        """Builds the head from the spec's ``model:`` section.

        Args:
            in_features (int): input width ``D``.
            num_tasks (int): number of tasks ``K``.
            model (Any): the ``model:`` section (a ``ModelSpec``, or any object with the
                attributes ``spec_args`` names).
            **options (Any): further constructor keywords (``build_head``'s extras).

        Returns:
            MultiTaskHead: the head.
        """
        kwargs: Dict[str, Any] = {}
        for arg, key in cls.spec_args.items():
            value = getattr(model, key)
            kwargs[arg] = list(value) if isinstance(value, list) else value
        return cls(in_features, num_tasks, **kwargs, **options)  # type: ignore[call-arg]

    @classmethod
    def check_spec(cls, checks: SpecReporter, path: KeyPath, model: Any) -> None:
        """Reports what the head cannot be built from, after the ``model:`` keys' own checks
        (counts are >= 0 here). Default: at least one expert.

        Args:
            checks (SpecReporter): the spec checker (``checks.err(...)``).
            path (KeyPath): the section's key path, ``("model",)``.
            model (Any): the ``model:`` section.
        """
        s, t = model.shared_experts, model.task_experts
        if s + t < 1:
            expected = "shared_experts + task_experts >= 1"
            checks.err(path + ("shared_experts",), expected, f"{s} + {t}", hint="no expert at all")

    @classmethod
    def matching_overrides(cls, model: Any, num_tasks: int) -> List[Tuple[str, Any]]:
        """Spec overrides that give this head the expert budget of the others
        (``compare --match-experts``); none by default.

        Args:
            model (Any): the ``model:`` section.
            num_tasks (int): number of tasks.

        Returns:
            List[Tuple[str, Any]]: ``(key.path, value)`` pairs.
        """
        return []

    def gate_layout(self, task_names: Sequence[str]) -> Dict[str, List[str]]:
        """The experts each gate mixes, in the column order of ``forward_with_gates``.

        Args:
            task_names (Sequence[str]): the tasks' names, in task order.

        Returns:
            Dict[str, List[str]]: gate key (``"level{j}/task{k}"``, ``"level{j}/shared"``) ->
            expert names (``"{task}/{i}"`` for task ``task``'s ``i``-th expert,
            ``"shared/{i}"`` for a shared one); empty for heads without gates.
        """
        return {}

    def __init__(self, in_features: int, num_tasks: int) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be at least 1, got {in_features}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        self._in_features = in_features
        self._num_tasks = num_tasks
        self._output_dims: List[int] = []

    @property
    def in_features(self) -> int:
        """Width of the input."""
        return self._in_features

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return self._num_tasks

    @property
    def output_dims(self) -> List[int]:
        """Width of each task's output representation, one entry per task."""
        return list(self._output_dims)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): input of shape ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors of shape ``(B, output_dims[k])``.
        """
        raise NotImplementedError

    def forward_with_gates(
        self, x: torch.Tensor
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """Like ``forward``, plus the gate weights (an empty dict for heads without gates).

        Args:
            x (torch.Tensor): input of shape ``(B, in_features)``.

        Returns:
            Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]: the task outputs and the
            gates, each ``(B, n_experts_seen)``.
        """
        gates: Dict[str, torch.Tensor] = {}
        return self.forward(x), gates
