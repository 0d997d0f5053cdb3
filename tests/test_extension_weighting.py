"""A loss weighting is one class plus its registration: a toy one, defined and registered
here alone, trains through ``fit`` when the spec names it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from torchrec_ple.registry import LOSS_WEIGHTINGS
from torchrec_ple.spec import SpecError, load_spec
from torchrec_ple.train.weightings import LossWeighting

SETTINGS = [
    "data.synthetic.train_rows=600",
    "data.synthetic.validation_rows=200",
    "train.batch_size=200",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
]


class Equal(LossWeighting):
    """Every task weighs ``1/K``, whatever the spec's ``tasks[].weight`` says."""

    def forward(self, losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return losses.sum() / self.num_tasks

    def weights(self) -> torch.Tensor:
        return torch.full((self.num_tasks,), 1.0 / self.num_tasks)


def _yaml_spec(tmp_path: Path, weighting: str) -> Path:
    text = (ROOT / "feature_specs" / "synthetic.yaml").read_text()
    assert "\ntrain:\n" in text
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("\ntrain:\n", f"\ntrain:\n  loss_weighting: {weighting}\n"))
    return path


def test_a_toy_weighting_trains_and_logs_its_weights(tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import fit

    with LOSS_WEIGHTINGS.registered("equal", Equal):
        spec = load_spec(_yaml_spec(tmp_path, "equal"), SETTINGS)
        assert spec.train.loss_weighting == "equal"
        metrics = fit(spec, tmp_path / "run", log=lambda line: None)
    (entry,) = metrics["history"]
    assert entry["task_weights"] == pytest.approx({"ctr": 1 / 3, "cvr": 1 / 3, "y2": 1 / 3})
    assert all(v == v and v > 0 for v in entry["train_loss"].values())  # trained, finite
    assert metrics["train"]["steps"] == 3


def test_an_unknown_weighting_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(_yaml_spec(tmp_path, "uncertainy"), SETTINGS)
    msg = str(err.value)
    assert "\n" not in msg
    assert "train.loss_weighting" in msg and "did you mean 'uncertainty'?" in msg
    assert "fixed, uncertainty" in msg


def test_the_registry_builds_the_builtins() -> None:
    from torchrec_ple.train.weightings import FixedWeighting, UncertaintyWeighting

    assert LOSS_WEIGHTINGS.get("fixed") is FixedWeighting
    assert LOSS_WEIGHTINGS.get("uncertainty") is UncertaintyWeighting
    with pytest.raises(KeyError, match="unknown loss weighting 'equl'"):
        LOSS_WEIGHTINGS.get("equl")
