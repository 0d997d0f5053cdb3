"""Checkpoints: atomic, pruned, and a resumed run reaches the uninterrupted run's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from torchrec_ple.spec import load_spec
from torchrec_ple.train.checkpoint import list_checkpoints
from torchrec_ple.train.trainer import evaluate, fit

SETTINGS = [
    "data.synthetic.train_rows=3000",
    "data.synthetic.validation_rows=1000",
    "train.batch_size=256",
    "train.epochs=2",
    "train.progress=false",
    "train.tensorboard=false",
    "model.dropout=0.1",  # exercises the RNG state
]


def _spec(*extra: str):
    return load_spec(ROOT / "feature_specs" / "synthetic.yaml", SETTINGS + list(extra))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("full")
    return out, fit(_spec(), out, log=lambda s: None)


def test_resume_mid_epoch_matches_uninterrupted(uninterrupted, tmp_path: Path) -> None:
    _, full = uninterrupted
    first = fit(_spec("train.max_steps=17"), tmp_path, log=lambda s: None)
    assert first["train"]["stopped_at_max_steps"] and first["train"]["steps"] == 17
    resumed = fit(_spec(), tmp_path, log=lambda s: None, resume=True)
    assert resumed["train"]["resumed_from"] == "step_000000017"
    assert resumed["train"]["steps"] == full["train"]["steps"]
    for task, m in full["tasks"].items():
        key = "auc" if "auc" in m else "mse"
        assert resumed["tasks"][task][key] == pytest.approx(m[key], rel=1e-4, abs=1e-5)


def test_checkpoints_are_pruned_and_evaluable(uninterrupted) -> None:
    out, full = uninterrupted
    kept = list_checkpoints(out / "checkpoints")
    assert [p.name for p in kept] == ["step_000000012", "step_000000024"]  # 12 steps/epoch, keep 2
    assert not list((out / "checkpoints").glob("*.tmp"))
    again = evaluate(_spec(), out)
    for task, m in full["tasks"].items():
        key = "auc" if "auc" in m else "mse"
        assert again["tasks"][task][key] == pytest.approx(m[key], rel=1e-6, abs=1e-7)


def test_half_written_checkpoint_is_ignored(uninterrupted, tmp_path: Path) -> None:
    import shutil

    out, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # a crash while writing leaves a .tmp folder without trainer.json: it is never picked up
    (run / "checkpoints" / "step_000000030.tmp").mkdir()
    partial = run / "checkpoints" / "step_000000031"
    partial.mkdir()
    names = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert names[-1] == "step_000000024"


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(
    uninterrupted, tmp_path: Path
) -> None:
    import shutil

    out, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(out, run)
    newest = run / "checkpoints" / "step_000000024"
    shards = sorted(newest.glob("*.distcp"))
    assert shards
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # truncated on disk
    lines: list[str] = []
    more = fit(_spec("train.epochs=3"), run, log=lines.append, resume=True)
    assert any("step_000000024 is unreadable" in line for line in lines)
    assert more["train"]["resumed_from"] == "step_000000012"
    assert more["train"]["steps"] == 36


def test_non_finite_loss_stops_with_step_and_rows(tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import TrainingError

    spec = _spec(
        "train.dense_optimizer.type=sgd",
        "train.dense_optimizer.lr=1e12",
        "train.checkpoint_every=1",
    )
    with pytest.raises(
        TrainingError,
        match=r"non-finite loss at step \d+ \(epoch 0, batch \d+\).*rows.*start with \[",
    ):
        fit(spec, tmp_path, log=lambda s: None)
    # every checkpoint on disk precedes the bad step and loads
    for ckpt in list_checkpoints(tmp_path / "checkpoints"):
        assert (ckpt / "trainer.json").is_file()
