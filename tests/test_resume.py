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
    # the interrupted epoch's mean train loss counts the steps before the resume too
    for got, want in zip(resumed["history"], full["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
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


def _nan_on_training_calls(monkeypatch: pytest.MonkeyPatch, calls: set[int]) -> None:
    """Make the training loss NaN on the given (1-based) training forward calls."""
    import torch

    from torchrec_ple.train.loss import MultiTaskTrainModule

    forward = MultiTaskTrainModule.forward
    seen = {"n": 0}

    def patched(self, batch):  # type: ignore[no-untyped-def]
        loss, rest = forward(self, batch)
        if self.training and isinstance(loss, torch.Tensor):  # not the pipeline's fx trace
            seen["n"] += 1
            if seen["n"] in calls:
                loss = loss * float("nan")
        return loss, rest

    monkeypatch.setattr(MultiTaskTrainModule, "forward", patched)


def _model_tensors(ckpt: Path, tmp: Path) -> dict:
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(ckpt, tmp)
    state = torch.load(tmp, weights_only=True)
    return {k: v for k, v in state["model"].items() if isinstance(v, torch.Tensor)}


def test_skip_nonfinite_applies_nothing_and_is_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    base = fit(_spec("train.max_steps=4"), tmp_path / "base", log=lambda s: None)
    assert base["train"]["skipped_steps"] == 0
    _nan_on_training_calls(monkeypatch, {5, 6})
    lines: list[str] = []
    run = fit(
        _spec("train.max_steps=6", "train.on_nonfinite_loss=skip"),
        tmp_path / "run",
        log=lines.append,
    )
    assert run["train"]["skipped_steps"] == 2
    assert [s["step"] for s in run["train"]["skipped"]] == [5, 6]
    assert sum("skipped step" in line and "non-finite loss" in line for line in lines) == 2
    # steps 5 and 6 changed nothing: dense weights, fused embedding rows (updated in the
    # backward by fbgemm) and their optimizer state equal the state after step 4
    before = _model_tensors(tmp_path / "base/checkpoints/step_000000004", tmp_path / "a.pt")
    after = _model_tensors(tmp_path / "run/checkpoints/step_000000006", tmp_path / "b.pt")
    assert before.keys() == after.keys() and any("embedding_bags" in k for k in before)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_too_many_skipped_steps_stop_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from torchrec_ple.train.trainer import TrainingError

    _nan_on_training_calls(monkeypatch, set(range(3, 100)))
    spec = _spec("train.on_nonfinite_loss=skip", "train.max_skipped_steps=2")
    with pytest.raises(TrainingError, match=r"3 steps skipped .* train.max_skipped_steps=2"):
        fit(spec, tmp_path, log=lambda s: None)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The disk fills up in the middle of writing a checkpoint's shards: the run stops with
    a one-line reason, the half-written directory is gone, the previous checkpoint still
    loads, and --resume then finishes the run."""
    import contextlib
    import errno
    import shutil

    from torch.distributed.checkpoint.filesystem import FileSystem

    from torchrec_ple.train.trainer import TrainingError

    first = fit(_spec("train.max_steps=12"), tmp_path, log=lambda s: None)  # step_12 on disk
    assert first["train"]["steps"] == 12
    create_stream = FileSystem.create_stream
    budget = {"bytes": 4096}  # the disk takes 4 kB more, then is full

    class FullDisk:
        def __init__(self, stream):  # type: ignore[no-untyped-def]
            self._stream = stream

        def write(self, b) -> int:  # type: ignore[no-untyped-def]
            n = len(memoryview(b).cast("B"))
            if n > budget["bytes"]:
                self._stream.write(memoryview(b).cast("B")[: budget["bytes"]])
                budget["bytes"] = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            budget["bytes"] -= n
            return self._stream.write(b)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self._stream, name)

    @contextlib.contextmanager
    def full_disk_stream(self, path, mode):  # type: ignore[no-untyped-def]
        with create_stream(self, path, mode) as stream:
            yield FullDisk(stream) if "w" in mode else stream

    monkeypatch.setattr(FileSystem, "create_stream", full_disk_stream)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=0))
    with pytest.raises(TrainingError) as err:
        fit(_spec("train.epochs=3"), tmp_path, log=lambda s: None, resume=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not write the checkpoint of step 24" in msg
    # torch.save's zip writer reports the failed write as "unexpected pos"; the free space
    # says why
    assert "0 MB free on that disk now" in msg
    assert "the newest intact checkpoint is" in msg and "step_000000012" in msg
    assert msg.endswith("then fit --resume.")
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in list_checkpoints(ckpts)] == ["step_000000012"]
    assert not list(ckpts.glob("*.tmp"))  # the partial write was removed
    monkeypatch.undo()  # space freed
    done = fit(_spec("train.epochs=3"), tmp_path, log=lambda s: None, resume=True)
    assert done["train"]["resumed_from"] == "step_000000012"
    assert done["train"]["steps"] == 36


def test_a_kill_while_pruning_leaves_nothing_that_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruning renames a checkpoint to ``step_N.old`` before deleting it: a kill during the
    delete (seen in tests/test_faults.py) leaves a leftover the next prune removes, never a
    half-deleted ``step_N`` that no later prune would look at."""

    import torch

    from torchrec_ple.train import checkpoint
    from torchrec_ple.train.checkpoint import prune_checkpoints, save_checkpoint

    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(3, 2)
    for step in (3, 6, 9):
        save_checkpoint(root / f"step_{step:09d}", model, None, {"step": step})

    class Killed(Exception):
        pass

    def killed_midway(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        (Path(path) / "trainer.json").unlink()  # part of the folder went, then the kill
        raise Killed

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(Killed):
        prune_checkpoints(root, keep=2)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == [
        "step_000000003.old",
        "step_000000006",
        "step_000000009",
    ]
    save_checkpoint(root / "step_000000012", model, None, {"step": 12})
    prune_checkpoints(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_000000009", "step_000000012"]


def test_leftovers_of_a_crashed_save_are_ignored_and_cleaned(tmp_path: Path) -> None:
    """A kill inside save_checkpoint can leave ``step_N.tmp`` (before the rename) or
    ``step_N.old`` (while replacing step N): neither is ever resumed from, a later save of
    the same step replaces them, and pruning removes them."""
    import shutil

    import torch

    from torchrec_ple.train.checkpoint import (
        load_checkpoint,
        prune_checkpoints,
        save_checkpoint,
    )

    root = tmp_path / "checkpoints"
    model = torch.nn.Linear(3, 2)
    save_checkpoint(root / "step_000000004", model, None, {"step": 4})
    shutil.copytree(root / "step_000000004", root / "step_000000008.old")  # complete-looking
    shutil.copytree(root / "step_000000004", root / "step_000000009.tmp")
    assert [p.name for p in list_checkpoints(root)] == ["step_000000004"]
    with torch.no_grad():
        model.weight.fill_(1.0)
    save_checkpoint(root / "step_000000008", model, None, {"step": 8})  # over the stale .old
    assert load_checkpoint(root / "step_000000008", torch.nn.Linear(3, 2)) == {"step": 8}
    prune_checkpoints(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_000000004", "step_000000008"]
