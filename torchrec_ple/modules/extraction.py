"""The engine of the gated heads: levels of task-specific and shared experts mixed by softmax
gates (``PLE``, ``CGC``, ``MMoE`` and ``MultiLevelMMoE`` are configurations of it)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from torchrec_ple.modules.base import KeyPath, MultiTaskHead, SpecReporter
from torchrec_ple.modules.extraction_level import _ExtractionLevel, _InnerLevel, _InputLevel
from torchrec_ple.modules.mlp import ParamSlice, check_dims


def check_task_gates(checks: SpecReporter, path: KeyPath, model: Any) -> bool:
    """Reports a task gate with no expert (``task_experts + shared_experts < 1``).

    Returns:
        bool: whether the counts give every task gate an expert.
    """
    s, t = model.shared_experts, model.task_experts
    if s + t >= 1:
        return True
    expected = "task_experts + shared_experts >= 1"
    checks.err(path + ("task_experts",), expected, f"{t} + {s}", hint="a task gate with no expert")
    return False


class ExtractionNetwork(MultiTaskHead):
    """Levels of task-specific and shared experts mixed by softmax gates: the engine behind
    ``PLE``, ``CGC``, ``MMoE`` and ``MultiLevelMMoE``.

    Level ``j`` (counted from 0) has ``num_task_experts`` experts per task and
    ``num_shared_experts`` shared experts, each an MLP of widths ``expert_dims``
    (activated after every layer).

    * Level 0: every expert and gate reads ``x``. Level ``j > 0``: task ``k``'s experts and
      gate read task ``k``'s level ``j - 1`` mixture; the shared experts and the shared gate
      read the level ``j - 1`` shared mixture.
    * Task ``k``'s gate is ``softmax(Linear(level input))`` over exactly task ``k``'s experts
      then the shared experts, and mixes them into task ``k``'s level output.
    * Every level but the last has a shared gate: a softmax over ALL experts of the level
      (task 0's, ..., task K-1's, shared), giving the shared mixture the next level reads. A
      shared gate only exists if something reads it, so ``num_shared_experts == 0`` means no
      shared gates at all (its mixture would feed no expert).
    * The task outputs are the last level's task mixtures, each ``(B, expert_dims[-1])``.

    Parameter layout (see ``expert_parameter_slices`` and ``gate_parameter_slices``): level 0
    keeps all first layers and gates in one matrix, later levels group them by input, and the
    deeper expert layers are stacked per level; nothing is shared between experts.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``; at least 1.
        num_levels (int): number of extraction levels; at least 1. Default: 2.
        num_shared_experts (int): shared experts per level. Default: 1.
        num_task_experts (int): experts per task per level. Default: 1.
        expert_dims (List[int]): layer widths of every expert. Default: ``[64, 32]``.
        activation (str): one of ``relu``, ``gelu``, ``silu``, ``tanh``. Default: ``relu``.
        dropout (float): dropout after every expert layer. Default: 0.0.

    Example::

        net = ExtractionNetwork(16, num_tasks=2, num_levels=2, expert_dims=[32, 8])
        outputs, gates = net.forward_with_gates(torch.randn(4, 16))
        # outputs: two (4, 8) tensors; gates["level0/task0"]: (4, 2), gates["level0/shared"]:
        # (4, 3), gates["level1/task1"]: (4, 2)
    """

    spec_args = {
        **MultiTaskHead.spec_args,
        "num_levels": "levels",
        "num_shared_experts": "shared_experts",
        "num_task_experts": "task_experts",
    }
    has_gates = True

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_levels: int = 2,
        num_shared_experts: int = 1,
        num_task_experts: int = 1,
        expert_dims: Optional[List[int]] = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        expert_dims = check_dims("expert_dims", [64, 32] if expert_dims is None else expert_dims)
        if num_levels < 1:
            raise ValueError(f"num_levels must be at least 1, got {num_levels}")
        if num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be >= 0, got {num_shared_experts}")
        if num_task_experts < 0:
            raise ValueError(f"num_task_experts must be >= 0, got {num_task_experts}")
        if num_shared_experts + num_task_experts < 1:
            raise ValueError(
                "every task gate mixes num_task_experts + num_shared_experts experts; with "
                "0 + 0 a gate would see no expert: set at least one of them to 1 or more"
            )
        self._num_levels = num_levels
        self._num_shared_experts = num_shared_experts
        self._num_task_experts = num_task_experts
        self._expert_dims = expert_dims
        levels: List[nn.Module] = []
        gate_keys: List[str] = []
        width = in_features
        for j in range(num_levels):
            has_shared_gate = j < num_levels - 1 and num_shared_experts > 0
            level_cls = _InputLevel if j == 0 else _InnerLevel
            levels.append(
                level_cls(
                    width,
                    num_tasks,
                    num_shared_experts,
                    num_task_experts,
                    expert_dims,
                    activation,
                    dropout,
                    has_shared_gate,
                )
            )
            gate_keys.extend(f"level{j}/task{k}" for k in range(num_tasks))
            if has_shared_gate:
                gate_keys.append(f"level{j}/shared")
            width = expert_dims[-1]
        self._levels = nn.ModuleList(levels)
        # per level: whether it has a shared gate (every level but the last, when there
        # are shared experts); static, so tracing (FX, TorchScript) sees no shape test
        self._shared_gates: List[bool] = [
            j < num_levels - 1 and num_shared_experts > 0 for j in range(num_levels)
        ]
        self._gate_keys: List[str] = gate_keys
        self._output_dims = [expert_dims[-1]] * num_tasks

    @property
    def num_levels(self) -> int:
        """Number of extraction levels."""
        return self._num_levels

    @property
    def gate_keys(self) -> List[str]:
        """Keys of ``forward_with_gates``'s gate dict, level by level, tasks then shared."""
        return list(self._gate_keys)

    @classmethod
    def check_spec(cls, checks: SpecReporter, path: KeyPath, model: Any) -> None:
        """Every task gate needs an expert (see ``MultiTaskHead.check_spec``)."""
        check_task_gates(checks, path, model)

    def gate_layout(self, task_names: Sequence[str]) -> Dict[str, List[str]]:
        """The experts each gate mixes, named ``{task}/{i}`` or ``shared/{i}``, keyed and
        ordered as ``forward_with_gates``'s gates (see ``MultiTaskHead.gate_layout``)."""
        if len(task_names) != self._num_tasks:
            raise ValueError(f"{len(task_names)} task names for {self._num_tasks} tasks")
        m_t = self._num_task_experts
        own = self._num_tasks * m_t
        names = [f"{task_names[e // m_t]}/{e % m_t}" for e in range(own)]
        names += [f"shared/{i}" for i in range(self._num_shared_experts)]
        keys = iter(self._gate_keys)
        layout: Dict[str, List[str]] = {}
        for j in range(self._num_levels):
            level = self._level(j)
            for g in range(level.num_gates):
                layout[next(keys)] = [names[e] for e in level.gate_experts(g)]
        return layout

    def _level(self, level: int) -> _ExtractionLevel:
        if not 0 <= level < self._num_levels:
            raise IndexError(f"level {level} out of range (network has {self._num_levels})")
        module = self._levels[level]
        assert isinstance(module, _ExtractionLevel)
        return module

    def expert_index(self, level: int, task: Optional[int], i: int) -> int:
        """Position of an expert in its level's order (the order of the shared gate).

        Args:
            level (int): level, from 0.
            task (Optional[int]): owning task, or ``None`` for a shared expert.
            i (int): index among that task's (or the shared) experts.
        """
        return self._level(level).expert_index(task, i)

    def expert_parameter_slices(self, level: int, task: Optional[int], i: int) -> List[ParamSlice]:
        """Where one expert's parameters live.

        Returns ``[(param, idx), ...]`` for each layer's weight then bias: ``param[idx]`` is the
        weight as ``(in, out)`` (the expert computes ``act(h @ W + b)``) or the bias ``(out,)``.
        The same ``idx`` applied to ``param.grad`` gives that expert's gradient.

        Args:
            level (int): level, from 0.
            task (Optional[int]): owning task, or ``None`` for a shared expert.
            i (int): index among that task's (or the shared) experts.
        """
        module = self._level(level)
        return module.expert_slices(module.expert_index(task, i))

    def gate_parameter_slices(self, level: int, task: Optional[int]) -> List[ParamSlice]:
        """Where one gate's ``Linear`` lives: ``[(weight, idx), (bias, idx)]``, the weight as
        ``(in, n_seen)`` (logits are ``h @ W + b``) with columns in the gate's expert order.

        Args:
            level (int): level, from 0.
            task (Optional[int]): the task of a task gate, or ``None`` for the shared gate.
        """
        module = self._level(level)
        if task is None:
            if not module.has_shared_gate:
                raise IndexError(f"level {level} has no shared gate")
            return module.gate_slices(self._num_tasks)
        if not 0 <= task < self._num_tasks:
            raise IndexError(f"task {task} out of range")
        return module.gate_slices(task)

    def _run(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        task_in = x
        shared_in = x
        mix = x
        dense_gates: List[torch.Tensor] = []
        for j, level in enumerate(self._levels):
            mix, gates = level(task_in, shared_in)
            dense_gates.append(gates)
            # mixtures are gate-major, (G, B, H): the tasks' rows, then the shared gate's.
            # split and unbind, not indexing: each backward is one cat or stack instead of
            # a zero-filled copy per piece
            if self._shared_gates[j]:
                parts = mix.split([self._num_tasks, 1], dim=0)
                task_in = parts[0]
                shared_in = parts[1].squeeze(0)
            else:
                # no shared gate: the next level (if any) has neither shared experts nor a
                # shared gate and never reads shared_in
                task_in = mix
        # the last level has no shared gate: its mixtures are the tasks' outputs
        per_task = mix.unbind(0)
        outputs: List[torch.Tensor] = []
        for k in range(self._num_tasks):
            outputs.append(per_task[k])
        return outputs, dense_gates

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            List[torch.Tensor]: ``num_tasks`` tensors of shape ``(B, expert_dims[-1])``.
        """
        outputs, _ = self._run(x)
        return outputs

    @torch.jit.export
    def forward_with_gates(
        self, x: torch.Tensor
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """
        Args:
            x (torch.Tensor): ``(B, in_features)``.

        Returns:
            Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]: the task outputs and each
            gate's softmax weights ``(B, n_seen)`` keyed by ``gate_keys``; see
            ``MultiTaskHead`` for the expert order.
        """
        outputs, dense_gates = self._run(x)
        gates: Dict[str, torch.Tensor] = {}
        i = 0
        for j, level in enumerate(self._levels):
            for weights in level.split_gates(dense_gates[j]):
                gates[self._gate_keys[i]] = weights
                i += 1
        return outputs, gates
