"""End to end: spec -> data -> sharded model (DMP, world size 1) -> fit -> evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from torchrec_ple.spec import load_spec
from torchrec_ple.train.trainer import evaluate, fit


@pytest.fixture(scope="module")
def adult_run(tmp_path_factory: pytest.TempPathFactory, adult_overrides: list[str]):
    out = tmp_path_factory.mktemp("adult")
    spec = load_spec(
        ROOT / "feature_specs" / "adult.yaml", adult_overrides + ["train.progress=false"]
    )
    return spec, out, fit(spec, out, log=lambda s: None)


def test_adult_ple_reaches_stated_auc(adult_run) -> None:
    spec, out, metrics = adult_run
    # 6,000 training rows of UCI Adult, 5 epochs: income AUC >= 0.88, never-married >= 0.90
    assert metrics["tasks"]["income"]["auc"] >= 0.88
    assert metrics["tasks"]["never_married"]["auc"] >= 0.90
    assert metrics["tasks"]["income"]["count"] == 3000
    assert metrics["train"]["samples_per_second"] > 0
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["tasks"] == metrics["tasks"]
    assert (out / "transforms.json").is_file()
    # 24 steps per epoch, the last two epoch-end checkpoints kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000000096",
        "step_000000120",
    ]


def test_evaluate_from_checkpoint_reproduces_metrics(adult_run) -> None:
    spec, out, metrics = adult_run
    again = evaluate(spec, out)
    for task, m in metrics["tasks"].items():
        assert again["tasks"][task]["auc"] == pytest.approx(m["auc"], abs=1e-6)
        assert again["tasks"][task]["count"] == m["count"]


def test_synthetic_spec_trains_every_task(tmp_path: Path) -> None:
    spec = load_spec(
        ROOT / "feature_specs" / "synthetic.yaml",
        [
            "data.synthetic.train_rows=8000",
            "data.synthetic.validation_rows=4000",
            "train.epochs=3",
            "train.batch_size=128",
            "train.progress=false",
        ],
    )
    metrics = fit(spec, tmp_path, log=lambda s: None)
    t = metrics["tasks"]
    assert t["ctr"]["auc"] > 0.65 and t["cvr"]["auc"] > 0.55
    # cvr is measured only on clicked rows
    assert 0 < t["cvr"]["count"] < t["ctr"]["count"] == 4000
    assert t["y2"]["mse"] < 0.5 * metrics["history"][0]["validation"]["y2"]["mse"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchrec_ple", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_bad_spec_is_one_readable_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (
        (ROOT / "feature_specs" / "synthetic.yaml")
        .read_text()
        .replace("architecture: ple", "architecture: plee")
    )
    bad.write_text(text)
    r = _cli("validate", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert (
        "model.architecture" in lines[0]
        and "did you mean 'ple'" in lines[0]
        and "bad.yaml:" in lines[0]
    )


def test_cli_validate_checks_data_columns(tmp_path: Path, adult_overrides: list[str]) -> None:
    sets = [a for o in adult_overrides for a in ("--set", o)]
    ok = _cli("validate", "feature_specs/adult.yaml", *sets)
    assert ok.returncode == 0, ok.stderr
    assert "present and usable" in ok.stdout
    r = _cli("validate", "feature_specs/adult.yaml", *sets, "--set", "features[0].column=workklass")
    assert r.returncode == 2 and "workklass" in r.stderr and "did you mean 'workclass'" in r.stderr
