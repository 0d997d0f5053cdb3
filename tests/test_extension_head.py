"""Adding an architecture is one class: a toy head registered from this test alone.

``OneGateMoE`` is defined and registered here only (nothing in the library names it): it
declares the ``model:`` keys it is built from, its own spec check and its gate layout; a
YAML spec that says ``model.architecture: one_gate_moe`` then loads, fits and reports its
gate like a built-in head does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytest
import torch
from torch import nn

from torchrec_ple.modules import MLP, MultiTaskHead
from torchrec_ple.modules.base import KeyPath, SpecReporter
from torchrec_ple.registry import HEADS
from torchrec_ple.spec import SpecError, parse_spec
from torchrec_ple.train.trainer import fit

NAME = "one_gate_moe"


class OneGateMoE(MultiTaskHead):
    """``num_experts`` expert MLPs mixed by one softmax gate; every task gets the mixture.

    Args:
        in_features (int): input width ``D``.
        num_tasks (int): number of tasks ``K``.
        num_experts (int): experts; at least 2.
        expert_dims (List[int]): layer widths of every expert.
        activation (str): hidden activation.
        dropout (float): dropout after every expert layer.
    """

    spec_args = {**MultiTaskHead.spec_args, "num_experts": "shared_experts"}
    has_gates = True

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_experts: int,
        expert_dims: List[int],
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_tasks)
        self.experts = nn.ModuleList(
            MLP(in_features, expert_dims, activation, dropout) for _ in range(num_experts)
        )
        self.gate = nn.Linear(in_features, num_experts)
        self._output_dims = [expert_dims[-1]] * num_tasks

    @classmethod
    def check_spec(cls, checks: SpecReporter, path: KeyPath, model: Any) -> None:
        if model.shared_experts < 2:
            checks.err(
                path + ("shared_experts",),
                "shared_experts >= 2",
                str(model.shared_experts),
                hint="one gate mixes at least two experts",
            )

    def gate_layout(self, task_names: Sequence[str]) -> Dict[str, List[str]]:
        return {"level0/shared": [f"expert/{i}" for i in range(len(self.experts))]}

    def forward_with_gates(
        self, x: torch.Tensor
    ) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        weights = torch.softmax(self.gate(x), dim=1)  # (B, E)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, H)
        mix = (weights.unsqueeze(2) * experts).sum(1)
        return [mix for _ in range(self._num_tasks)], {"level0/shared": weights}

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_with_gates(x)[0]


SPEC = """
data:
  source: synthetic
  synthetic: {train_rows: 600, validation_rows: 200, dim: 4, num_users: 50, num_items: 80,
              history_len: 3, seed: 0}
features:
  - {name: user_id, type: categorical, embedding: {dim: 4}}
  - {name: x0, type: numeric}
  - {name: x1, type: numeric}
  - {name: x2, type: numeric}
  - {name: x3, type: numeric}
tasks:
  - {name: ctr, label: click, type: binary}
  - {name: y2, label: y2, type: regression}
model: {architecture: one_gate_moe, shared_experts: 3, expert_dims: [8], tower_dims: [4]}
train:
  batch_size: 128
  epochs: 1
  progress: false
  dense_optimizer: {type: adam, lr: 0.01}
  embedding_optimizer: {type: adagrad, lr: 0.05}
"""


@pytest.fixture
def toy_head():
    with HEADS.registered(NAME, OneGateMoE) as cls:
        yield cls


def test_registered_head_fits_and_reports_its_gate(toy_head, tmp_path: Path) -> None:
    spec = parse_spec(SPEC, tmp_path / "toy.yaml")
    assert spec.model.architecture == NAME
    fit(spec, tmp_path / "run", log=lambda line: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"ctr", "y2"}
    assert 0.0 <= metrics["tasks"]["ctr"]["auc"] <= 1.0
    assert metrics["model"]["architecture"] == NAME
    gate = metrics["gates"]["level0/shared"]
    assert gate["experts"] == ["expert/0", "expert/1", "expert/2"]
    assert sum(gate["mean"]) == pytest.approx(1.0)


def test_registered_head_checks_its_own_keys(toy_head, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC.replace("shared_experts: 3", "shared_experts: 1"), tmp_path / "t.yaml")
    text = str(e.value)
    assert "model.shared_experts" in text and "shared_experts >= 2" in text
    assert "one gate mixes at least two experts" in text


def test_registration_ends_with_the_block(toy_head) -> None:
    assert HEADS.names()[-1] == NAME
    assert toy_head.from_spec(6, 2, parse_spec(SPEC).model).output_dims == [8, 8]


def test_unknown_architecture_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC, tmp_path / "toy.yaml")  # not registered outside the fixture
    lines = str(e.value).strip().splitlines()
    assert len(lines) == 1
    assert "model.architecture" in lines[0] and repr(NAME) in lines[0]
    assert "one of single_task, shared_bottom" in lines[0] and "ple" in lines[0]
