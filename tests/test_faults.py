"""Fault tests: training processes killed with SIGKILL at random moments, run as a user would.

1. ``python -m torchrec_ple fit`` is killed (``kill -9`` of its process group) twice, each
   time a random fraction of a second after it wrote a checkpoint newer than the one it
   started from, relaunched with ``--resume`` each time, and the last ``fit --resume``
   finishes: it reaches exactly the uninterrupted run's metrics, epoch by epoch.
2. ``torchrun --max-restarts=1`` with two workers: the ``LOCAL_RANK=1`` worker is killed,
   torchrun restarts both workers, they resume from the newest checkpoint on their own and
   reach exactly the metrics of an uninterrupted two-process run.

The kill moments come from ``random.Random(seed)``; the seed is in every failure message and
``TORCHREC_PLE_FAULT_SEED=<seed>`` replays a run's choices. Linux only (``/proc``, sessions).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Type

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

SPEC = ROOT / "feature_specs" / "synthetic.yaml"
COMMON = [
    "data.synthetic.train_rows=3000",
    "data.synthetic.validation_rows=1000",
    "train.progress=false",
    "train.tensorboard=false",
    "model.dropout=0.1",  # exercises the RNG state saved in checkpoints
]
# one process: 12 steps per epoch, 72 in all, a checkpoint every 3 steps (and at epoch ends:
# the epoch's last step is saved twice, which exercises replacing a checkpoint)
ONE_PROCESS = COMMON + ["train.batch_size=256", "train.epochs=6", "train.checkpoint_every=3"]
# two processes: 3000 rows / 2 ranks / 128 = 12 steps per epoch, 36 in all
TWO_PROCESSES = COMMON + ["train.batch_size=128", "train.epochs=3", "train.checkpoint_every=2"]
KILLS = 2
MAX_KILL_DELAY_S = 1.0


def _max_delay(full: Dict[str, Any]) -> float:
    """The longest wait before a kill: MAX_KILL_DELAY_S, or a quarter of the uninterrupted
    run's training time on a machine fast enough to finish the run within it (a kill must
    land before the end, after two kills too)."""
    return min(MAX_KILL_DELAY_S, full["train"]["seconds"] / 4)


LAUNCH_TIMEOUT_S = 120.0
RESUMED = re.compile(r"resumed from (step_\S+): epoch (\d+), batch (\d+), step (\d+)")
CHECKPOINT = re.compile(r"step_(\d{9})")
# launched processes must not inherit a surrounding launcher's rendezvous or restart count
_DIST_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone if it leads none)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone already


def _seed() -> int:
    env = os.environ.get("TORCHREC_PLE_FAULT_SEED")
    return int(env) if env else random.SystemRandom().randrange(2**32)


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    # unbuffered: a SIGKILLed process loses no lines of its log
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    return env


def _sets(settings: List[str]) -> List[str]:
    return [a for s in settings for a in ("--set", s)]


def _fit_cmd(out: Path, settings: List[str], resume: bool = False) -> List[str]:
    cmd = [sys.executable, "-m", "torchrec_ple", "fit", str(SPEC), "--out", str(out)]
    return cmd + (["--resume"] if resume else []) + _sets(settings)


def _torchrun_cmd(out: Path, settings: List[str]) -> List[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "-m",
        "torchrec_ple",
        "fit",
        str(SPEC),
        "--out",
        str(out),
        *_sets(settings),
    ]


def _children(pid: int) -> List[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parens
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(text.split(" ", 1)[0]))
    return found


def _descendants(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _environ(pid: int) -> Dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


class _Run:
    """One command in its own session (so its process group can be killed), output in a file."""

    def __init__(self, cmd: List[str], log: Path) -> None:
        self.log = log
        self._file = open(log, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=_env(),
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.log} (last {chars} chars) ---\n{self.output()[-chars:]}"

    def kill_group(self) -> int:
        """SIGKILL the process group and every descendant, and reap the leader.

        torchrun starts each worker in a session of its own, so killing the launcher's group
        alone would orphan them: the launcher is stopped first (it cannot start new workers),
        then the groups of all its descendants and its own group are killed.

        Returns:
            int: the leader's return code (``-9`` when this SIGKILL ended it).
        """
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGSTOP)
            for pid in _descendants(self.proc.pid):
                _signal_group(pid, signal.SIGKILL)
            _signal_group(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=30)
        self._file.close()
        return rc

    def wait(self, timeout: float, note: str) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"{note}: still running after {timeout:.0f}s\n{self.tail()}")
        self._file.close()
        return rc


class _Runs:
    """Starts :class:`_Run` s; on exit, whatever happened, kills every process group left."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._runs: List[_Run] = []

    def start(self, name: str, cmd: List[str]) -> _Run:
        run = _Run(cmd, self._logs / f"{len(self._runs):02d}-{name}.log")
        self._runs.append(run)
        return run

    def __enter__(self) -> _Runs:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        for run in self._runs:
            try:
                run.kill_group()
            except subprocess.TimeoutExpired:
                pass


def _entries(out: Path) -> List[str]:
    """Everything under ``<out>/checkpoints``; complete ones (with trainer.json) marked ``*``."""
    root = out / "checkpoints"
    try:
        names = sorted(p.name for p in root.iterdir())
    except FileNotFoundError:
        return []
    return [n + ("*" if (root / n / "trainer.json").is_file() else "") for n in names]


def _complete_steps(out: Path) -> List[int]:
    """Steps of the complete checkpoints ``step_NNNNNNNNN`` (``.tmp``/``.old`` excluded)."""
    return sorted(
        int(m.group(1))
        for e in _entries(out)
        if e.endswith("*") and (m := CHECKPOINT.fullmatch(e[:-1]))
    )


def _wait_until(
    cond: Callable[[], bool], run: _Run, what: str, note: str, timeout: float = LAUNCH_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        rc = run.proc.poll()
        if rc is not None:
            pytest.fail(f"{note}: exited with {rc} before {what}\n{run.tail()}")
        if time.monotonic() > deadline:
            run.kill_group()
            pytest.fail(f"{note}: timed out after {timeout:.0f}s waiting for {what}\n{run.tail()}")
        time.sleep(0.02)


def _metrics(out: Path, run: _Run, note: str) -> Dict[str, Any]:
    path = out / "metrics.json"
    assert path.is_file(), f"{note}: no {path}\n{run.tail()}"
    return json.loads(path.read_text())


def _assert_same_results(got: Dict[str, Any], ref: Dict[str, Any], note: str) -> None:
    """Final task metrics and every epoch's validation metrics equal the reference run's."""
    assert got["train"]["steps"] == ref["train"]["steps"], note
    pairs = [("tasks", got["tasks"], ref["tasks"])] + [
        (f"epoch {e['epoch']}", e.get("validation", {}), r.get("validation", {}))
        for e, r in zip(got["history"], ref["history"])
    ]
    assert len(got["history"]) == len(ref["history"]), note
    for where, g, r in pairs:
        assert set(g) == set(r), f"{note}: {where}: tasks {sorted(g)} != {sorted(r)}"
        for task, m in r.items():
            assert g[task]["count"] == m["count"], f"{note}: {where}: {task} count"
            for key in ("auc", "mse"):
                if key in m:
                    assert g[task][key] == pytest.approx(m[key], rel=1e-4, abs=1e-5), (
                        f"{note}: {where}: {task} {key}: {g[task][key]} != {m[key]} (uninterrupted)"
                    )


def test_kill_at_random_steps_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    t0 = time.monotonic()
    full_dir, run_dir = tmp_path / "full", tmp_path / "killed"
    kills: List[Dict[str, Any]] = []
    with _Runs(tmp_path) as runs:
        run = runs.start("uninterrupted", _fit_cmd(full_dir, ONE_PROCESS))
        assert run.wait(LAUNCH_TIMEOUT_S, "uninterrupted fit") == 0, run.tail()
        full = _metrics(full_dir, run, "uninterrupted fit")

        launch = 0
        while True:
            note = f"seed {seed}, launch {launch}, kills so far {kills}"
            run = runs.start(f"launch{launch}", _fit_cmd(run_dir, ONE_PROCESS, resume=launch > 0))
            if launch > 0:
                # the resumed launch ignored whatever the kill left half-written
                resumed = kills[-1]["newest_complete"]
                _wait_until(
                    lambda r=run: RESUMED.search(r.output()) is not None, run, "resume", note
                )
                m = RESUMED.search(run.output())
                assert m is not None and m.group(1) == f"step_{resumed:09d}", (
                    f"{note}: expected to resume from step_{resumed:09d} "
                    f"(left on disk: {kills[-1]['left']})\n{run.tail()}"
                )
                assert int(m.group(4)) == resumed, f"{note}\n{run.tail()}"
            if len(kills) == KILLS:
                break
            before = max(_complete_steps(run_dir), default=0)
            # this launch made progress: a checkpoint newer than the one it started from
            _wait_until(
                lambda b=before: max(_complete_steps(run_dir), default=0) > b,
                run,
                f"a complete checkpoint after step {before}",
                note,
            )
            delay = rng.uniform(0.0, _max_delay(full))
            time.sleep(delay)
            at_kill = max(_complete_steps(run_dir))
            assert run.proc.poll() is None, (
                f"{note}: fit finished within {delay:.2f}s of step {at_kill}, before kill "
                f"{len(kills) + 1}: make the run longer\n{run.tail()}"
            )
            rc = run.kill_group()
            assert rc == -signal.SIGKILL, f"{note}: killed fit returned {rc}\n{run.tail()}"
            assert not (run_dir / "metrics.json").exists(), f"{note}: killed after finishing"
            steps = _complete_steps(run_dir)
            kills.append(
                {
                    "delay_s": round(delay, 3),
                    "newest_complete": steps[-1],
                    "left": _entries(run_dir),
                }
            )
            launch += 1

        note = f"seed {seed}, kills {kills}"
        assert run.wait(LAUNCH_TIMEOUT_S, f"{note}: final fit --resume") == 0, run.tail()
        got = _metrics(run_dir, run, note)

    assert len(kills) >= 2 and all(k["newest_complete"] > 0 for k in kills), note
    assert got["train"]["resumed_from"] == f"step_{kills[-1]['newest_complete']:09d}", note
    _assert_same_results(got, full, note)
    # a kill mid-write leaves step_N.tmp (no trainer.json): the resume skips it and re-saving
    # step N deletes it first, so the finished run holds the uninterrupted run's checkpoints only
    assert _entries(run_dir) == _entries(full_dir), note
    assert all(e.endswith("*") and CHECKPOINT.fullmatch(e[:-1]) for e in _entries(run_dir)), note
    print(f"\n{note}; {time.monotonic() - t0:.1f}s")


def _first_worker(launcher: int, local_rank: int) -> Optional[int]:
    """The first-generation (restart count 0) worker of ``local_rank`` under ``launcher``."""
    for pid in _descendants(launcher):
        env = _environ(pid)
        if env.get("LOCAL_RANK") == str(local_rank) and env.get("TORCHELASTIC_RESTART_COUNT") in (
            None,
            "0",
        ):
            if "torchrec_ple" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return pid
    return None


def _hint(out: str) -> str:
    if "connectFullMesh failed" not in out:
        return ""
    return (
        " (the restarted workers' gloo init read the dead workers' addresses: torchrun's agent "
        "keeps one rendezvous TCPStore for all restarts; init_distributed's _restart_store "
        "must scope the keys per restart)"
    )


def test_torchrun_restarts_a_killed_rank_and_resumes(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    t0 = time.monotonic()
    full_dir, run_dir = tmp_path / "full", tmp_path / "killed"
    with _Runs(tmp_path) as runs:
        run = runs.start("uninterrupted", _torchrun_cmd(full_dir, TWO_PROCESSES))
        assert run.wait(LAUNCH_TIMEOUT_S, "uninterrupted torchrun") == 0, run.tail()
        full = _metrics(full_dir, run, "uninterrupted torchrun")

        note = f"seed {seed}"
        run = runs.start("killed", _torchrun_cmd(run_dir, TWO_PROCESSES))
        _wait_until(lambda: bool(_complete_steps(run_dir)), run, "a complete checkpoint", note)
        delay = rng.uniform(0.0, _max_delay(full))
        time.sleep(delay)
        worker = _first_worker(run.proc.pid, local_rank=1)
        assert worker is not None, f"{note}: no LOCAL_RANK=1 worker found\n{run.tail()}"
        at_kill = max(_complete_steps(run_dir))
        os.kill(worker, signal.SIGKILL)
        note = (
            f"seed {seed}: killed rank 1 (pid {worker}) {delay:.3f}s after a checkpoint, "
            f"newest step_{at_kill:09d}"
        )
        rc = run.wait(LAUNCH_TIMEOUT_S, note)
        out = run.output()
        assert rc == 0, f"{note}: torchrun returned {rc}{_hint(out)}\n{run.tail()}"
        got = _metrics(run_dir, run, note)

    # the agent saw the SIGKILL (exit code -9) of that very worker, and restarted the workers
    assert f"failed (exitcode: -9) local_rank: 1 (pid: {worker})" in out, (
        f"{note}: torchrun did not report the worker killed by SIGKILL\n{run.tail()}"
    )
    assert "torchrun restart 1: resuming from the newest checkpoint" in out, f"{note}\n{run.tail()}"
    m = RESUMED.search(out)
    assert m is not None, f"{note}: no resume line\n{run.tail()}"
    assert int(m.group(4)) >= at_kill, f"{note}: resumed from {m.group(1)}"
    assert got["train"]["resumed_from"] == m.group(1), note
    assert got["train"]["world_size"] == 2 and full["train"]["world_size"] == 2, note
    assert full["train"]["resumed_from"] is None, note
    _assert_same_results(got, full, note)
    print(f"\n{note}; resumed from {m.group(1)}; {time.monotonic() - t0:.1f}s")
