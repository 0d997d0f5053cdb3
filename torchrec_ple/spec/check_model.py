"""Checks of the ``model:`` section.

The keys every model has are checked here; what an architecture needs of them (its expert
counts) is the head's own ``check_spec``, found through ``HEADS``.
"""

from __future__ import annotations

from torchrec_ple.registry import HEADS
from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import ACTIVATIONS, ModelSpec


class ModelChecks(Checks):
    """Checks of the ``model:`` section."""

    def check_model(self, m: ModelSpec) -> None:
        M: KeyPath = ("model",)
        known = self.choice(M + ("architecture",), m.architecture, HEADS.names())
        self.choice(M + ("activation",), m.activation, ACTIVATIONS)
        self.at_least(M + ("levels",), m.levels)
        self.at_least(M + ("shared_experts",), m.shared_experts, 0)
        self.at_least(M + ("task_experts",), m.task_experts, 0)
        if not m.expert_dims:
            self.err(M + ("expert_dims",), "a non-empty list of int", "list []")
        for key in ("expert_dims", "tower_dims"):
            for j, d in enumerate(getattr(m, key)):
                self.at_least(M + (key, j), d)
        self.within(M + ("dropout",), 0 <= m.dropout < 1, "a number in [0, 1)", m.dropout)
        if m.shared_experts < 0 or m.task_experts < 0:
            return
        # the head's own checks (expert counts); an unknown name gets every head's default
        # (imported here, as HEADS imports the heads: on use, never at the spec's import)
        from torchrec_ple.modules.base import MultiTaskHead

        head = HEADS.get(m.architecture) if known else MultiTaskHead
        head.check_spec(self, M, m)
