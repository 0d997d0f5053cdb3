"""One extraction level of PLE / CGC / MMoE: experts, gates, softmax and mixture, fused.

``ExtractionNetwork`` (``extraction.py``) stacks these levels; nothing else uses them.
"""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from torchrec_ple.modules.mlp import ParamSlice, StackedMLP, make_activation, make_dropout


class _ExtractionLevel(nn.Module):
    """What every extraction level shares: expert layout, the deeper expert layers, the gates'
    softmax and the mixture.

    Experts of a level are numbered task 0's ``m_t`` experts, task 1's, ..., then the ``m_s``
    shared ones (``E = K * m_t + m_s``). Gates are numbered task 0 .. task K-1, then the shared
    gate if the level has one (``G`` gates). Gate logits are laid out gate after gate in that
    order; a task gate's columns are its own experts then the shared ones, the shared gate's
    columns are all ``E`` experts in expert order.

    The mixture of the whole level is one weighted sum over the experts: the logits are copied
    (to fixed rows) into a dense ``(E, G, B)`` tensor whose unseen entries are ``-inf``, so one
    softmax over the experts gives every gate its softmax over exactly the experts it may see
    and exact zeros elsewhere. Experts lead that layout because a softmax over a leading dim of
    size ``E`` runs vectorized over the ``G * B`` columns (14x faster on CPU than over a last
    dim of 2-4 entries). The weighted sum of the ``(E, B, H)`` expert outputs into ``(G, B, H)``
    mixtures takes one of two forms, chosen from the level's shape:

    * few, narrow experts (``E <= 4`` and ``G * H <= 256``, e.g. the census PLE's 3 experts x 3
      gates x 32): ``E`` multiply-adds of ``(G, B, 1)`` gate columns into ``(G, B, H)``. Each
      op streams through data that stays in cache; a per-row ``bmm`` would run ``B`` tiny
      ``(G, E) @ (E, H)`` products (measured on CPU, forward + backward: 0.35-0.8x its time);
    * otherwise one ``bmm`` over the rows, ``(B, G, E) @ (B, E, H)`` (gates transposed and
      copied, the experts a strided view), whose products are big enough to run at matmul
      speed (0.2-0.85x the multiply-adds' time for 5-10 experts or ``G * H`` of 640-1280).

    Either way the mixtures are ``(G, B, H)``: the next level reads the tasks' rows and the
    shared row as slices.
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_shared_experts: int,
        num_task_experts: int,
        expert_dims: List[int],
        activation: str,
        dropout: float,
        has_shared_gate: bool,
    ) -> None:
        super().__init__()
        k, m_s, m_t = num_tasks, num_shared_experts, num_task_experts
        self._in_features = in_features
        self._num_tasks = k
        self._m_s = m_s
        self._m_t = m_t
        self._num_experts = k * m_t + m_s
        self._num_gates = k + int(has_shared_gate)
        self._has_shared_gate = has_shared_gate
        self._first_dim = expert_dims[0]
        self._expert_width = self._num_experts * self._first_dim
        self._task_gate_width = m_t + m_s
        self._gate_widths: List[int] = [m_t + m_s] * k + (
            [self._num_experts] if has_shared_gate else []
        )
        self._gate_offsets: List[int] = [sum(self._gate_widths[:g]) for g in range(self._num_gates)]
        self._num_logits = sum(self._gate_widths)
        self._activation = make_activation(activation)
        self._dropout = make_dropout(dropout)
        # Deeper layers of all experts at once: one baddbmm per layer.
        self._tail = StackedMLP(
            self._num_experts,
            expert_dims[0],
            expert_dims[1:],
            activation,
            dropout,
            activate_last=True,
            shared_input=False,
        )
        self._output_dim = expert_dims[-1]
        # how _mix sums the experts (see the class docstring)
        self._mix_by_rows = not (
            self._num_experts <= 4 and self._num_gates * expert_dims[-1] <= 256
        )

        num_experts = self._num_experts
        # Logit row r (gate g's column p) lands at entry e * G + g of the dense (E, G) layout.
        logit_pos = [0] * self._num_logits
        seen_index: List[int] = []
        for g in range(self._num_gates):
            for p, e in enumerate(self.gate_experts(g)):
                logit_pos[self._gate_offsets[g] + p] = e * self._num_gates + g
                seen_index.append(g * num_experts + e)
        self.register_buffer(
            "_logit_pos", torch.tensor(logit_pos, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "_seen_index", torch.tensor(seen_index, dtype=torch.long), persistent=False
        )

    @property
    def output_dim(self) -> int:
        return self._output_dim

    @property
    def has_shared_gate(self) -> bool:
        return self._has_shared_gate

    @property
    def num_gates(self) -> int:
        """Gates of the level: one per task, then the shared gate if it has one."""
        return self._num_gates

    def expert_index(self, task: Optional[int], i: int) -> int:
        """Position of task ``task``'s (``None``: the shared) ``i``-th expert."""
        if task is None:
            if not 0 <= i < self._m_s:
                raise IndexError(f"shared expert {i} out of range (level has {self._m_s})")
            return self._num_tasks * self._m_t + i
        if not (0 <= task < self._num_tasks and 0 <= i < self._m_t):
            raise IndexError(f"task {task} expert {i} out of range")
        return task * self._m_t + i

    def gate_experts(self, gate: int) -> List[int]:
        """The experts gate ``gate`` mixes, in its column order."""
        shared = list(range(self._num_tasks * self._m_t, self._num_experts))
        if gate == self._num_tasks:
            return list(range(self._num_experts))
        own = list(range(gate * self._m_t, (gate + 1) * self._m_t))
        return own + shared

    def first_layer_slices(self, expert: int) -> List[ParamSlice]:
        raise NotImplementedError

    def gate_slices(self, gate: int) -> List[ParamSlice]:
        raise NotImplementedError

    def expert_slices(self, expert: int) -> List[ParamSlice]:
        return self.first_layer_slices(expert) + self._tail.mlp_parameter_slices(expert)

    def _reset(self, *params: Optional[nn.Parameter]) -> None:
        bound = 1.0 / math.sqrt(self._in_features)
        for p in params:
            if p is not None:
                nn.init.uniform_(p, -bound, bound)

    def _mix(
        self, first: torch.Tensor, logit_rows: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            first (torch.Tensor): activated first layer of every expert, ``(E, B, H1)``.
            logit_rows (List[torch.Tensor]): every gate's logits, transposed, in gate order:
                pieces ``(n_i, B)`` whose rows add up to ``num_logits``.

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: mixtures ``(G, B, H)`` and dense gate weights
            ``(E, G, B)`` (zero where a gate does not see an expert).
        """
        experts = self._tail(first)  # (E, B, H)
        rows = logit_rows[0] if len(logit_rows) == 1 else torch.cat(logit_rows, dim=0)
        # unseen entries stay -inf; index_copy's backward is a gather (index_select's a scatter)
        blank = rows.new_full((self._num_experts * self._num_gates, rows.shape[1]), float("-inf"))
        dense = blank.index_copy(0, self._logit_pos, rows).view(
            self._num_experts, self._num_gates, -1
        )
        gates = torch.softmax(dense, dim=0)  # (E, G, B)
        if self._mix_by_rows:
            # (B, G, E) contiguous: bmm on the permuted view falls back to a loop over rows
            rows_first = gates.permute(2, 1, 0).contiguous()
            return torch.bmm(rows_first, experts.transpose(0, 1)).transpose(0, 1), gates
        # unbind, not indexing: one stack in the backward instead of a zero-filled copy and
        # an add per expert
        columns = gates.unsqueeze(-1).unbind(0)  # E x (G, B, 1)
        outputs = experts.unbind(0)  # E x (B, H)
        mix = columns[0] * outputs[0]
        for e in range(1, self._num_experts):
            mix = torch.addcmul(mix, columns[e], outputs[e])
        return mix, gates

    def split_gates(self, gates: torch.Tensor) -> List[torch.Tensor]:
        """Dense ``(E, G, B)`` gate weights to one ``(B, n_seen)`` tensor per gate."""
        seen = gates.permute(2, 1, 0).flatten(1).index_select(1, self._seen_index)
        return list(seen.split(self._gate_widths, dim=1))


class _InputLevel(_ExtractionLevel):
    """The first level: every expert and gate reads the same input, so the first layer of all
    experts and all gates' logits are one ``addmm`` against ``fused_weight``, ``(D, E * H1 +
    num_logits)``: columns ``[e * H1, (e + 1) * H1)`` are expert ``e``'s first layer, the rest
    the gates' logits in gate order.
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_shared_experts: int,
        num_task_experts: int,
        expert_dims: List[int],
        activation: str,
        dropout: float,
        has_shared_gate: bool,
    ) -> None:
        super().__init__(
            in_features,
            num_tasks,
            num_shared_experts,
            num_task_experts,
            expert_dims,
            activation,
            dropout,
            has_shared_gate,
        )
        width = self._expert_width + self._num_logits
        self.fused_weight = nn.Parameter(torch.empty(in_features, width))
        self.fused_bias = nn.Parameter(torch.empty(width))
        self._reset(self.fused_weight, self.fused_bias)

    def first_layer_slices(self, expert: int) -> List[ParamSlice]:
        cols = slice(expert * self._first_dim, (expert + 1) * self._first_dim)
        return [(self.fused_weight, (slice(None), cols)), (self.fused_bias, (cols,))]

    def gate_slices(self, gate: int) -> List[ParamSlice]:
        start = self._expert_width + self._gate_offsets[gate]
        cols = slice(start, start + self._gate_widths[gate])
        return [(self.fused_weight, (slice(None), cols)), (self.fused_bias, (cols,))]

    def forward(
        self, task_in: torch.Tensor, shared_in: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            task_in (torch.Tensor): the input ``x``, ``(B, D)``.
            shared_in (torch.Tensor): the same ``x`` (ignored).

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: mixtures ``(G, B, H)``, gates ``(E, G, B)``.
        """
        fused = torch.addmm(self.fused_bias, task_in, self.fused_weight)
        # split (not two slices): its backward is one cat instead of zero-filled copies.
        parts = fused.split([self._expert_width, self._num_logits], dim=1)
        first = self._dropout(self._activation(parts[0]))
        first = first.view(-1, self._num_experts, self._first_dim).transpose(0, 1)
        return self._mix(first, [parts[1].t()])


class _InnerLevel(_ExtractionLevel):
    """A later level: task ``k``'s experts and gate read task ``k``'s previous mixture, the
    shared experts and the shared gate read the previous shared mixture. Experts are grouped
    by input:

    * ``task_weight`` ``(K, D, m_t * H1 + m_t + m_s)``, ``task_bias`` ``(K, ...)``: per task,
      its experts' first layers then its gate; one ``baddbmm`` over the stacked task inputs.
    * ``shared_weight`` ``(D, m_s * H1 + [E])``, ``shared_bias``: the shared experts' first
      layers then (if any) the shared gate; one ``addmm``. ``None`` when empty.
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_shared_experts: int,
        num_task_experts: int,
        expert_dims: List[int],
        activation: str,
        dropout: float,
        has_shared_gate: bool,
    ) -> None:
        super().__init__(
            in_features,
            num_tasks,
            num_shared_experts,
            num_task_experts,
            expert_dims,
            activation,
            dropout,
            has_shared_gate,
        )
        self._task_expert_width = self._m_t * self._first_dim
        self._shared_expert_width = self._m_s * self._first_dim
        task_width = self._task_expert_width + self._task_gate_width
        self.task_weight = nn.Parameter(torch.empty(num_tasks, in_features, task_width))
        self.task_bias = nn.Parameter(torch.empty(num_tasks, task_width))
        shared_gate_width = self._num_experts if has_shared_gate else 0
        shared_width = self._shared_expert_width + shared_gate_width
        self._task_split: List[int] = [self._task_expert_width, self._task_gate_width]
        self._shared_split: List[int] = [self._shared_expert_width, shared_gate_width]
        if shared_width > 0:
            self.shared_weight: Optional[nn.Parameter] = nn.Parameter(
                torch.empty(in_features, shared_width)
            )
            self.shared_bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(shared_width))
        else:
            self.register_parameter("shared_weight", None)
            self.register_parameter("shared_bias", None)
        self._reset(self.task_weight, self.task_bias, self.shared_weight, self.shared_bias)

    def first_layer_slices(self, expert: int) -> List[ParamSlice]:
        h1 = self._first_dim
        num_task_experts = self._num_tasks * self._m_t
        if expert < num_task_experts:
            task, i = divmod(expert, self._m_t)
            cols = slice(i * h1, (i + 1) * h1)
            return [
                (self.task_weight, (task, slice(None), cols)),
                (self.task_bias, (task, cols)),
            ]
        assert self.shared_weight is not None and self.shared_bias is not None
        s = expert - num_task_experts
        cols = slice(s * h1, (s + 1) * h1)
        return [(self.shared_weight, (slice(None), cols)), (self.shared_bias, (cols,))]

    def gate_slices(self, gate: int) -> List[ParamSlice]:
        if gate < self._num_tasks:
            cols = slice(self._task_expert_width, self._task_expert_width + self._task_gate_width)
            return [
                (self.task_weight, (gate, slice(None), cols)),
                (self.task_bias, (gate, cols)),
            ]
        assert self.shared_weight is not None and self.shared_bias is not None
        cols = slice(self._shared_expert_width, self._shared_expert_width + self._num_experts)
        return [(self.shared_weight, (slice(None), cols)), (self.shared_bias, (cols,))]

    def forward(
        self, task_in: torch.Tensor, shared_in: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            task_in (torch.Tensor): each task's previous mixture, ``(K, B, D)``.
            shared_in (torch.Tensor): the previous shared mixture, ``(B, D)``.

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: mixtures ``(G, B, H)``, gates ``(E, G, B)``.
        """
        k, m_t, m_s, h1 = self._num_tasks, self._m_t, self._m_s, self._first_dim
        per_task = torch.baddbmm(self.task_bias.unsqueeze(1), task_in, self.task_weight)
        task_parts = per_task.split(self._task_split, dim=2)
        firsts: List[torch.Tensor] = []
        if m_t > 0:
            task_first = self._dropout(self._activation(task_parts[0]))
            # (K, B, m_t * H1) -> (K * m_t, B, H1), experts of task 0 first.
            task_first = task_first.reshape(k, -1, m_t, h1).permute(0, 2, 1, 3)
            firsts.append(task_first.reshape(k * m_t, -1, h1))
        # (K, B, m_t + m_s) -> (K * (m_t + m_s), B): task 0's gate's logits first.
        logits = [task_parts[1].transpose(1, 2).reshape(k * (m_t + m_s), -1)]
        shared_weight = self.shared_weight
        shared_bias = self.shared_bias
        if shared_weight is not None and shared_bias is not None:
            shared = torch.addmm(shared_bias, shared_in, shared_weight)
            shared_parts = shared.split(self._shared_split, dim=1)
            if m_s > 0:
                shared_first = self._dropout(self._activation(shared_parts[0]))
                firsts.append(shared_first.view(-1, m_s, h1).transpose(0, 1))
            if self._has_shared_gate:
                logits.append(shared_parts[1].t())
        return self._mix(torch.cat(firsts, dim=0), logits)
