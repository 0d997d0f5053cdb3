"""The run folder users can trust: nothing of a run is lost unless asked, every refusal is
one line, and Ctrl-C ends with one line and exit code 130.

Most cases run the CLI in process (``main([...])``); the lock's second writer and the real
Ctrl-C are other processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.cli_helpers import SMALL_RUN
from tests.conftest import ROOT
from torchrec_ple.cli import main
from torchrec_ple.spec import load_spec
from torchrec_ple.spec.errors import DataError
from torchrec_ple.train import out_paths, run_dir
from torchrec_ple.train.run_dir import LOCK_FILE, RunLock, spec_changes

SPEC = ROOT / "feature_specs" / "synthetic.yaml"
SETTINGS = SMALL_RUN  # 600 rows / 128 per batch: 5 steps per epoch


def _sets(settings: List[str]) -> List[str]:
    return [a for s in settings for a in ("--set", s)]


def _fit_args(out: Path, *extra: str, settings: List[str] = SETTINGS) -> List[str]:
    return ["fit", str(SPEC), "--out", str(out), *extra, *_sets(settings)]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (a run must come through untouched)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_fit_args(out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# ------------------------------------------------------------------------- --out checks


def test_out_checks_are_one_line_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    own = tmp_path / "proj"
    own.mkdir()
    shutil.copyfile(SPEC, own / "spec.yaml")
    cases = [
        ("", [], "--out: expected a run folder, e.g. --out runs/first, found an empty path"),
        (".", [], "expected a folder of the run's own"),
        ("afile", [], "afile: expected a folder for --out, found an existing file"),
        ("afile/run", [], "afile/run: expected a path for --out under a folder, found afile"),
    ]
    for out, extra, message in cases:
        assert main(["fit", str(SPEC), "--out", out, *extra, *_sets(SETTINGS)]) == 2, out
        assert message in _one_error_line(capsys), out
    # the user's own spec in the --out folder would be replaced by the run's spec.yaml
    args = ["fit", str(own / "spec.yaml"), "--out", str(own), *_sets(SETTINGS)]
    assert main(args) == 2
    assert "is the spec" in _one_error_line(capsys)
    assert (own / "spec.yaml").read_bytes() == SPEC.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "proj"]  # nothing written


def test_out_that_cannot_be_written_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "readonly"
    locked.mkdir()
    real = os.access
    # as root every folder is writable: ask os.access, as the check does, for this one
    monkeypatch.setattr(
        out_paths.os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode)
    )
    assert main(_fit_args(locked / "run")) == 2
    assert "found no write permission on" in _one_error_line(capsys)
    assert main(_fit_args(locked)) == 2
    assert "readonly: expected a folder this user may write" in _one_error_line(capsys)


# ------------------------------------------------------------------------- earlier runs


def test_fit_into_an_earlier_run_is_refused_without_resume_or_overwrite(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run_copy)
    assert main(_fit_args(run_copy)) == 2
    line = _one_error_line(capsys)
    assert "found an earlier run (checkpoints step_000000005; metrics.json)" in line
    assert "pass --resume to continue it, --overwrite to replace it, or pick a new --out" in line
    assert _snapshot(run_copy) == before
    # argparse refuses both at once
    with pytest.raises(SystemExit) as e:
        main(_fit_args(run_copy, "--resume", "--overwrite"))
    assert e.value.code == 2


def test_overwrite_deletes_nothing_until_the_data_is_read(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchrec_ple.train import trainer

    before = _snapshot(run_copy)

    def unreadable(spec):  # type: ignore[no-untyped-def]
        raise DataError(file="typo/train.parquet", expected="an existing file", found="nothing")

    from torchrec_ple.data import pipeline, sources

    monkeypatch.setattr(pipeline, "load_tables", unreadable)
    monkeypatch.setattr(sources, "load_tables", unreadable)  # the CLI's prefetch thread's
    assert main(_fit_args(run_copy, "--overwrite")) == 2
    assert "typo/train.parquet" in _one_error_line(capsys)
    assert _snapshot(run_copy) == before  # the earlier run is whole
    assert not (run_copy / LOCK_FILE).exists()
    monkeypatch.undo()

    lines: List[str] = []
    spec = load_spec(SPEC, SETTINGS + ["train.max_steps=3"])
    metrics = trainer.fit(spec, run_copy, log=lines.append, overwrite=True)
    assert metrics["train"]["steps"] == 3
    assert any(
        line.startswith(f"--overwrite: replaced the earlier run in {run_copy}: ")
        and "step_000000005" in line
        for line in lines
    ), lines
    assert [p.name for p in (run_copy / "checkpoints").iterdir()] == ["step_000000003"]
    assert json.loads((run_copy / "metrics.json").read_text())["train"]["steps"] == 3


# ------------------------------------------------------------------------------ resume


def test_resume_without_a_checkpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(_fit_args(tmp_path / "none", "--resume")) == 2
    assert "none: expected the run folder of a fit to --resume" in _one_error_line(capsys)
    assert not (tmp_path / "none").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_fit_args(empty, "--resume")) == 2
    assert "expected a complete checkpoint to --resume from, found none" in _one_error_line(capsys)
    assert list(empty.iterdir()) == []
    # a torchrun restart may come before the first checkpoint: it starts over
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main(_fit_args(empty, "--resume", settings=SETTINGS + ["train.max_steps=2"])) == 0
    assert (empty / "checkpoints" / "step_000000002").is_dir()


def test_resume_with_a_changed_spec_names_the_keys_and_writes_nothing(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(run_copy)
    changed = SETTINGS + ["model.expert_dims=[32]", "train.seed=7"]
    assert main(_fit_args(run_copy, "--resume", settings=changed)) == 2
    line = _one_error_line(capsys)
    assert f"{run_copy / 'spec.yaml'}: expected --resume with the spec the run was" in line
    assert "model.expert_dims: run has [64, 32], spec has [32]" in line
    assert "train.seed: run has 0, spec has 7" in line
    assert _snapshot(run_copy) == before  # spec.yaml included


def test_resume_accepts_resumable_keys_and_keeps_the_first_spec_yaml(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = (run_copy / "spec.yaml").read_bytes()
    more = SETTINGS + ["train.epochs=2", "train.log_every=7", "train.keep_checkpoints=3"]
    assert main(_fit_args(run_copy, "--resume", settings=more)) == 0
    metrics = json.loads((run_copy / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] == "step_000000005" and metrics["train"]["steps"] == 10
    assert (run_copy / "spec.yaml").read_bytes() == saved  # written once, by the new run


def test_spec_changes_ignore_defaults_written_out_and_resumable_keys(tmp_path: Path) -> None:
    import yaml

    from torchrec_ple.spec.loader import plain

    saved = tmp_path / "spec.yaml"
    spec = load_spec(SPEC, SETTINGS)
    saved.write_text(yaml.safe_dump(plain(spec.raw), sort_keys=False))
    same = load_spec(
        SPEC,
        SETTINGS
        + [
            "model.dropout=0.0",  # the default, now written out
            "train.epochs=9",
            "train.max_steps=3",
            "features[0].embedding.sharding=row_wise",
        ],
    )
    assert spec_changes(same, saved) == []
    # fit ignores the tune: block, so a resume may add or change it
    tuned = load_spec(
        SPEC, SETTINGS + ["tune={trials: 3, params: [{key: train.epochs, low: 1, high: 3}]}"]
    )
    assert spec_changes(tuned, saved) == []
    other = load_spec(SPEC, SETTINGS + ["model.levels=1", "train.batch_size=64"])
    assert spec_changes(other, saved) == [
        "model.levels: run has 2, spec has 1",
        "train.batch_size: run has 128, spec has 64",
    ]


# -------------------------------------------------------------------------------- lock

_HOLD = (
    "import sys, time; from pathlib import Path; from torchrec_ple.train.run_dir import RunLock;"
    "lock = RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
)


def test_a_second_writer_is_refused_naming_pid_and_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataError, match=f"locked by pid {holder.pid} on host"):
            RunLock(tmp_path)
        assert main(_fit_args(tmp_path)) == 2
        line = _one_error_line(capsys)
        assert f"locked by pid {holder.pid} on host {socket.gethostname()}" in line
        assert "wait for that fit to end or pick another --out" in line
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "checkpoints").exists()
    # killed (-9): the kernel dropped its flock, the file still names it; taken over
    lock = RunLock(tmp_path)
    assert lock.took_over is not None and lock.took_over["pid"] == holder.pid
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_and_said(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "earlier"})
    )
    lines: List[str] = []
    run = run_dir.open_run(
        load_spec(SPEC, SETTINGS),
        tmp_path,
        resume=False,
        overwrite=False,
        restarted=False,
        log=lines.append,
    )
    assert lines == [
        f"took over {tmp_path / LOCK_FILE}: its pid {gone.pid} on host {socket.gethostname()} "
        "since earlier is no longer running"
    ]
    assert run.lock is not None
    del run  # released with its handle (fit's frame ending)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_left_on_another_host_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere-h0"}))
    with pytest.raises(DataError, match="locked by pid 1 on host elsewhere-h0.*delete"):
        RunLock(tmp_path)


def test_fit_releases_its_lock(finished_run: Path) -> None:
    assert not (finished_run / LOCK_FILE).exists()


# ------------------------------------------------------------------- export and predict


def test_export_over_an_export_needs_overwrite(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    assert main(["export", "--checkpoint", str(finished_run), "--out", str(model)]) == 0
    first = _snapshot(model)
    assert "manifest.json" in first
    assert main(["export", "--checkpoint", str(finished_run), "--out", str(model)]) == 2
    line = _one_error_line(capsys)
    assert f"{model}: expected a new or empty folder for --out, found an earlier export" in line
    assert "pass --overwrite" in line
    assert _snapshot(model) == first
    args = ["export", "--checkpoint", str(finished_run), "--out", str(model), "--overwrite"]
    assert main(args) == 0
    assert "(replaced the earlier export there)" in capsys.readouterr().out
    assert sorted(_snapshot(model)) == sorted(first)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left
    # a file, or a folder of other files (here the run itself), is never replaced
    (tmp_path / "model.pt2").write_text("mine")
    for out, found in (
        (tmp_path / "model.pt2", "found an existing file"),
        (finished_run, "found a folder holding other files (checkpoints, fit.log, metrics.json"),
    ):
        args = ["export", "--checkpoint", str(finished_run), "--out", str(out), "--overwrite"]
        assert main(args) == 2
        assert found in _one_error_line(capsys)
    assert (tmp_path / "model.pt2").read_text() == "mine"


def test_predict_output_that_is_a_folder_is_one_line(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", str(SPEC), "--checkpoint", str(finished_run)]
    args += ["--input", str(tmp_path / "x.parquet"), "--output", str(tmp_path)]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert f"{tmp_path}: expected a file path for --output, found an existing folder" in line


# ---------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_fit_is_one_line_and_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchrec_ple.train.pipeline import LocalTrainPipeline  # one process's pipeline

    progress = LocalTrainPipeline.progress
    calls = {"n": 0}

    def interrupted(self, batches):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return progress(self, batches)

    monkeypatch.setattr(LocalTrainPipeline, "progress", interrupted)
    out = tmp_path / "run"
    assert main(_fit_args(out, settings=SETTINGS + ["train.checkpoint_every=2"])) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        f"interrupted at step 3; the newest checkpoint is {out}/checkpoints/step_000000002; "
        "fit --resume continues"
    ), err
    assert not (out / LOCK_FILE).exists()


def test_real_sigint_ends_fit_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = SETTINGS + ["data.synthetic.train_rows=20000", "train.checkpoint_every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchrec_ple", *_fit_args(out, settings=settings)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("step_*/trainer.json")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    tail = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and tail[-1].startswith("interrupted at step "), err[-3000:]
    assert "; the newest checkpoint is " in tail[-1] and tail[-1].endswith("fit --resume continues")
    assert not (out / LOCK_FILE).exists()


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_checkpoint(tmp_path: Path) -> None:
    from torch import nn

    from torchrec_ple.train import checkpoint as ckpt

    done = []
    real_save = ckpt._save_checkpoint

    def save_interrupted(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-write
        time.sleep(0.05)
        real_save(*args)  # type: ignore[arg-type]
        done.append(True)

    ckpt._save_checkpoint = save_interrupted  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(tmp_path / "step_000000001", nn.Linear(2, 1), None, {"step": 1})
    finally:
        ckpt._save_checkpoint = real_save  # type: ignore[assignment]
    assert done and (tmp_path / "step_000000001" / "trainer.json").is_file()
    assert not (tmp_path / "step_000000001.tmp").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
