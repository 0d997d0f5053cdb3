"""Two processes on gloo, launched with torchrun exactly as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from torchrec_ple.spec import load_spec
from torchrec_ple.train.trainer import evaluate, fit

SETTINGS = [
    "data.synthetic.train_rows=3000",
    "data.synthetic.validation_rows=1000",
    "train.batch_size=128",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
]
SPEC = ROOT / "feature_specs" / "synthetic.yaml"


def _torchrun(*args: str, settings: list[str]) -> subprocess.CompletedProcess:
    sets = [a for s in settings for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "torchrec_ple",
            *args,
            str(SPEC),
            *sets,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("one")
    fit(load_spec(SPEC, SETTINGS), out, log=lambda s: None)
    return out, evaluate(load_spec(SPEC, SETTINGS), out)


def _assert_same_metrics(a: dict, b: dict, tol: float) -> None:
    for task, m in a.items():
        for key in ("auc", "mse", "count"):
            if key in m:
                assert b[task][key] == pytest.approx(m[key], rel=tol, abs=tol), (task, key)


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise", "data_parallel"])
def test_each_sharding_type_matches_one_process(one_process_run, sharding: str) -> None:
    out, ref = one_process_run
    hints = [f"features[{i}].embedding.sharding={sharding}" for i in (0, 1)]
    r = _torchrun("evaluate", "--checkpoint", str(out), "--json", settings=SETTINGS + hints)
    got = json.loads(r.stdout[r.stdout.index("{") :])
    # the 1-process checkpoint is resharded by DCP into 2 ranks; outputs must agree
    _assert_same_metrics(ref["tasks"], got["tasks"], 1e-5)


def test_two_process_training_checkpoint_loads_into_one(tmp_path: Path) -> None:
    hints = [f"features[{i}].embedding.sharding=row_wise" for i in (0, 1)]
    _torchrun("fit", "--out", str(tmp_path), settings=SETTINGS + hints + ["train.max_steps=5"])
    _torchrun("fit", "--out", str(tmp_path), "--resume", settings=SETTINGS + hints)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        metrics["train"]["world_size"] == 2 and metrics["train"]["resumed_from"] == "step_000000005"
    )
    # 3000 rows / 2 ranks / 128 per batch = 12 steps per rank per epoch
    assert metrics["train"]["steps"] == 12
    assert metrics["tasks"]["cvr"]["count"] == metrics["history"][-1]["validation"]["cvr"]["count"]
    # 2 -> 1: the row-wise 2-rank checkpoint evaluates in one process to the same metrics
    one = evaluate(load_spec(SPEC, SETTINGS), tmp_path)
    _assert_same_metrics(metrics["tasks"], one["tasks"], 1e-5)
    # ... and training continues in one process from it (model and optimizer resharded)
    more = fit(
        load_spec(SPEC, SETTINGS + ["train.epochs=2"]), tmp_path, log=lambda s: None, resume=True
    )
    assert more["train"]["world_size"] == 1 and more["train"]["steps"] == 12 + 24


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise", "data_parallel"])
def test_every_sharding_type_trains_in_two_processes(tmp_path: Path, sharding: str) -> None:
    hints = [f"features[{i}].embedding.sharding={sharding}" for i in (0, 1)]
    _torchrun("fit", "--out", str(tmp_path), settings=SETTINGS + hints + ["train.max_steps=4"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and metrics["train"]["world_size"] == 2
    assert (tmp_path / "checkpoints" / "step_000000004" / "trainer.json").is_file()
