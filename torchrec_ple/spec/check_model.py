"""Checks of the ``model:`` section."""

from __future__ import annotations

from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import (
    ACTIVATIONS,
    ARCHITECTURES,
    ModelSpec,
)


class ModelChecks(Checks):
    """Checks of the ``model:`` section."""

    def check_model(self, m: ModelSpec) -> None:
        M: KeyPath = ("model",)
        self.choice(M + ("architecture",), m.architecture, ARCHITECTURES)
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
        s, t, a = m.shared_experts, m.task_experts, m.architecture
        if s < 0 or t < 0:
            return
        gate = None  # (key, expected, found, hint) of an expert-count problem
        if a in ("mmoe", "ml_mmoe") and s < 1:
            gate = ("shared_experts", "shared_experts >= 1", str(s), "MMoE experts are all shared")
        elif a in ("ple", "cgc") and s + t < 1:
            expected = "task_experts + shared_experts >= 1"
            gate = ("task_experts", expected, f"{t} + {s}", "a task gate with no expert")
        elif a == "ple" and m.levels > 1 and s < 1:
            hint = "the shared gate of a lower level would be a gate with no expert"
            gate = ("shared_experts", "shared_experts >= 1 for ple with levels > 1", str(s), hint)
        elif s + t < 1:
            expected = "shared_experts + task_experts >= 1"
            gate = ("shared_experts", expected, f"{s} + {t}", "no expert at all")
        if gate is not None:
            self.err(M + (gate[0],), gate[1], gate[2], hint=gate[3])
