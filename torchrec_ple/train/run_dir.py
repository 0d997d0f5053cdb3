"""The run folder of ``fit`` (``--out``): checked before any work, locked while written.

Nothing of an earlier run is deleted or replaced unless the user asked for it:

- the ``--out`` argument is checked before any data is read (not empty, not the current
  directory of a fresh run, not a file or under one, writable, and ``spec.yaml`` of the run
  would not overwrite the user's own spec);
- one ``fit`` at a time writes a folder: ``fit.lock`` names the holder's pid and host; a
  lock left by a process that is gone (``kill -9``) is taken over, and the log says so;
- a folder that holds an earlier run (checkpoints or ``metrics.json``) is refused unless
  ``--resume`` continues it or ``--overwrite`` replaces it; with ``--overwrite`` the earlier
  run is removed only once the new run's data has been read and its transforms fitted;
- ``--resume`` needs a checkpoint, and the spec the run was trained with: a changed key is
  named (see :data:`RESUMABLE_KEYS` for the keys that may change).

Every refusal is one :class:`~torchrec_ple.spec.errors.DataError` or
:class:`~torchrec_ple.spec.errors.SpecError` line (``error: ...``, exit code 2 in the CLI).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import socket
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from torchrec_ple.spec.errors import DataError, SpecError, format_value

__all__ = [
    "LOCK_FILE",
    "RESUMABLE_KEYS",
    "RunFolder",
    "RunLock",
    "check_out_arg",
    "check_out_file",
    "check_out_folder",
    "earlier_run",
    "interrupted_message",
    "open_run",
    "release_all",
    "spec_changes",
]

LOCK_FILE = "fit.lock"
# The files fit writes at the top of its folder (trainer.SPEC_FILE, TRANSFORMS_FILE,
# METRICS_FILE); named here so the CLI can check --out without importing torch.
_SPEC_FILE, _TRANSFORMS_FILE, _METRICS_FILE = "spec.yaml", "transforms.json", "metrics.json"
_CHECKPOINT_DIR, _TENSORBOARD_DIR = "checkpoints", "tensorboard"

# Keys that may differ between a run's spec.yaml and the spec of its ``--resume``: how long
# to train, how it is logged and checkpointed, where the (same) data now lives and how the
# tables are placed (DCP reshards them). Any other change would silently train another
# model from the checkpoint (or fail to load it), so it is refused. ``[*]`` is any index.
RESUMABLE_KEYS: Tuple[str, ...] = (
    "train.epochs",
    "train.max_steps",
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_threads",
    "train.eval_batch_size",
    "train.on_nonfinite_loss",
    "train.max_skipped_steps",
    # when to stop early (its verdict is recomputed from the run's history on resume)
    "train.early_stopping",
    "train.early_stopping.patience",
    "train.early_stopping.min_delta",
    "data.train.path",
    "data.validation.path",
    "data.num_workers",
    "features[*].embedding.sharding",
    # where the same weights live and how they are computed (a resume may move devices)
    "features[*].embedding.compute_kernel",
    "features[*].embedding.cache_load_factor",
    "train.precision",
    "train.planner",
    "train.planner.hbm_cap_gb",
    "train.planner.ddr_cap_gb",
    "train.dist_timeout_s",
)
# whole sections a resume may change: fit ignores ``tune:`` (the search space of ``tune``)
RESUMABLE_SECTIONS: Tuple[str, ...] = ("tune",)
_MAX_NAMED_CHANGES = 6

# ----------------------------------------------------------------------- path arguments


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def _check_parents(path: Path, what: str) -> None:
    """Refuse a path under a file, or one whose nearest existing folder is not writable."""
    base = _nearest_existing(path.parent if path.parent != path else path)
    if base.exists() and not base.is_dir():
        raise DataError(
            file=str(path), expected=f"a path for {what} under a folder", found=f"{base} is a file"
        )
    if base.exists() and not os.access(base, os.W_OK | os.X_OK):
        raise DataError(
            file=str(path),
            expected=f"a folder this user may write ({what})",
            found=f"no write permission on {base}",
        )


def check_out_folder(path: Path, what: str = "--out") -> None:
    """Refuse an output folder that is a file, lies under a file or cannot be written.

    Args:
        path (Path): the folder to write (it may not exist yet).
        what (str): the argument's name, for the message. Default: ``--out``.

    Raises:
        DataError: one line naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(file=str(path), expected=f"a folder for {what}", found="an existing file")
    if not path.is_dir():
        _check_parents(path, what)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise DataError(
            file=str(path),
            expected=f"a folder this user may write ({what})",
            found="no write permission",
        )


def check_out_file(path: Path, what: str = "--output") -> None:
    """Refuse an output file path that is a folder, lies under a file or cannot be written.

    Args:
        path (Path): the file to write (replaced if it exists).
        what (str): the argument's name, for the message. Default: ``--output``.

    Raises:
        DataError: one line naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(
            file=str(path), expected=f"a file path for {what}", found="an existing folder"
        )
    _check_parents(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise DataError(
            file=str(path), expected=f"a file this user may write ({what})", found="read-only"
        )


def _check_not_user_spec(out: Path, spec_path: Optional[Path]) -> None:
    if spec_path is None:
        return
    for name in (_SPEC_FILE, _TRANSFORMS_FILE, _METRICS_FILE):
        target = out / name
        try:
            same = target.exists() and Path(spec_path).exists() and target.samefile(spec_path)
        except OSError:
            same = False
        if same:
            raise DataError(
                file=str(out),
                expected="a run folder where fit's files do not replace the spec",
                found=f"{target} is the spec {spec_path}",
                hint="pick another --out, e.g. runs/first",
            )


def check_out_arg(raw: str, spec_path: Optional[Path] = None, resume: bool = False) -> Path:
    """The checked ``--out`` of ``fit``, before any work starts.

    Refuses an empty string (it would mean the current directory), the current directory
    itself for a new run (a run folder holds checkpoints, metrics and a ``spec.yaml`` of its
    own), a folder where fit's ``spec.yaml`` would replace the user's spec, and whatever
    :func:`check_out_folder` refuses.

    Args:
        raw (str): the argument as typed.
        spec_path (Optional[Path]): the user's spec file.
        resume (bool): ``--resume`` (continuing a run from inside its folder is fine).

    Returns:
        Path: the folder.

    Raises:
        DataError: one line naming the problem.
    """
    if not raw.strip():
        raise DataError(
            file="--out", expected="a run folder, e.g. --out runs/first", found="an empty path"
        )
    path = Path(raw)
    if not resume and path.resolve() == Path.cwd().resolve():
        raise DataError(
            file=raw,
            expected="a folder of the run's own (e.g. --out runs/first)",
            found="the current directory",
            hint="fit writes checkpoints, metrics.json, transforms.json and spec.yaml there",
        )
    _check_not_user_spec(path, spec_path)
    check_out_folder(path)
    return path


# --------------------------------------------------------------------------------- lock


def _start_time(pid: int) -> Optional[str]:
    """A process's start time since boot (``/proc``), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields and fields[0] == "Z":  # a zombie has ended; it only waits to be reaped
        return "zombie"
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    now = _start_time(pid)
    if now == "zombie":
        return False
    return started is None or now is None or now == started


def _holder_text(holder: Dict[str, Any]) -> str:
    since = holder.get("since")
    when = f" since {since}" if since else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class _Held:
    """The lock file this process holds: an open descriptor with a ``flock`` on it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd, self.users = path, fd, 0

    def release(self) -> None:
        try:
            # unlink only our own file: another process may have replaced a stale one
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)


_HELD: Dict[str, _Held] = {}


def _drop(key: str, held: _Held) -> None:
    if _HELD.get(key) is not held:  # released already (release_all)
        return
    held.users -= 1
    if held.users <= 0:
        del _HELD[key]
        held.release()


def release_all() -> None:
    """Release every lock this process holds (the CLI's last step, whatever happened)."""
    for held in list(_HELD.values()):
        held.release()
    _HELD.clear()


class RunLock:
    """The lock of a run folder: ``<folder>/fit.lock``, holding the writer's pid and host.

    Exclusive through ``flock`` (which the kernel drops when the process dies, even by
    ``kill -9``); the file's content names the holder for the refusal and for taking over
    a lock its process left. Released when the handle is garbage (``fit`` returned or
    raised), or at exit; a second lock of the same folder in this process shares it.

    Args:
        folder (Path): the run folder (must exist).

    Raises:
        DataError: another live process holds the folder (its pid and host are named).

    Example::

        lock = RunLock(out)  # refuses if another fit writes `out`
        print(lock.took_over)  # a dead holder's record, or None
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.took_over: Optional[Dict[str, Any]] = None
        key = str(self.path.resolve())
        held = _HELD.get(key)
        if held is None:
            held, self.took_over = self._acquire()
            _HELD[key] = held
        held.users += 1
        self._finalizer = weakref.finalize(self, _drop, key, held)

    def release(self) -> None:
        """Release the lock now (it is released anyway when the handle is garbage)."""
        self._finalizer()

    def _acquire(self) -> Tuple[_Held, Optional[Dict[str, Any]]]:
        host = socket.gethostname()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                locked = False
            except OSError:  # no flock on this filesystem: the pid record decides alone
                locked = True
            if locked:
                try:
                    same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:  # the holder released (unlinked) it meanwhile: retry
                    os.close(fd)
                    continue
            holder = self._read(fd)
            if not locked or (holder and self._live_elsewhere(holder, host)):
                os.close(fd)
                raise DataError(
                    file=str(self.path.parent),
                    expected="a run folder no other fit is writing",
                    found=f"locked by {_holder_text(holder)}",
                    hint=(
                        "wait for that fit to end or pick another --out"
                        if holder.get("host") in (None, host)
                        else f"if that fit has ended, delete {self.path}"
                    ),
                )
            me = {
                "pid": os.getpid(),
                "host": host,
                "started": _start_time(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
            os.fsync(fd)
            mine = holder.get("pid") == os.getpid() and holder.get("host") == host
            return _Held(self.path, fd), (holder if holder and not mine else None)
        raise DataError(
            file=str(self.path), expected="a lock file that stays put", found="it kept changing"
        )

    @staticmethod
    def _read(fd: int) -> Dict[str, Any]:
        try:
            data = os.pread(fd, 4096, 0)
            holder = json.loads(data.decode()) if data.strip() else {}
        except (OSError, ValueError):
            return {"pid": "?", "host": "?"}  # unreadable: treat as a dead holder's
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _live_elsewhere(holder: Dict[str, Any], host: str) -> bool:
        """Whether the recorded holder may still run (the flock was free, so normally not)."""
        if holder.get("host") not in (host, "?"):
            return True  # another host: its pid cannot be checked from here
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        return _alive(pid, holder.get("started"))


# ---------------------------------------------------------------------- spec on resume


def _norm_key(key: str) -> str:
    return re.sub(r"\[\d+\]", "[*]", key)


def _resolved(spec: Any) -> Dict[str, Any]:
    from torchrec_ple.spec.loader import plain

    d = dataclasses.asdict(spec)
    d.pop("path", None)
    d.pop("raw", None)
    return plain(d)


def _show(value: Any) -> str:
    text = format_value(value)
    for kind in ("list ", "mapping "):
        if text.startswith(kind):
            return text[len(kind) :]
    return text


def _diff(run: Any, now: Any, key: str, out: List[Tuple[str, str]]) -> None:
    if isinstance(run, dict) and isinstance(now, dict):
        for k in list(run) + [k for k in now if k not in run]:
            name = k[:-1] if k.endswith("_") else k  # `in_` is `in:` in YAML
            sub = f"{key}.{name}" if key else name
            if k not in run:
                out.append((sub, f"run has no {sub}, spec has {_show(now[k])}"))
            elif k not in now:
                out.append((sub, f"run has {_show(run[k])}, spec has no {sub}"))
            else:
                _diff(run[k], now[k], sub, out)
        return
    if (
        isinstance(run, list)
        and isinstance(now, list)
        and len(run) == len(now)
        and any(isinstance(v, dict) for v in run)
    ):
        for i, (a, b) in enumerate(zip(run, now)):
            _diff(a, b, f"{key}[{i}]", out)
        return
    if isinstance(run, list) and isinstance(now, list) and any(isinstance(v, dict) for v in run):
        out.append((key, f"run has {len(run)} entries, spec has {len(now)}"))
    elif run != now:
        out.append((key, f"run has {_show(run)}, spec has {_show(now)}"))


def spec_changes(spec: Any, saved: Path) -> List[str]:
    """The keys where ``spec`` differs from a run's saved ``spec.yaml``, resumable ones aside.

    Both are compared resolved (defaults filled in), so a default written out is no change.
    A saved spec that no longer parses is compared as written.

    Args:
        spec (Spec): the spec of the ``--resume``.
        saved (Path): the run's ``spec.yaml``.

    Returns:
        List[str]: ``key: run has X, spec has Y`` lines, in spec order.
    """
    from torchrec_ple.spec.loader import parse_spec, plain

    text = saved.read_text(encoding="utf-8")
    try:
        # parsed as if it were the user's file, so relative data paths resolve alike
        run: Any = _resolved(parse_spec(text, spec.path))
        now: Any = _resolved(spec)
    except SpecError:
        run, now = yaml.safe_load(text), plain(spec.raw)
    found: List[Tuple[str, str]] = []
    _diff(run, now, "", found)
    allowed = set(RESUMABLE_KEYS)
    return [
        f"{key}: {what}"
        for key, what in found
        if _norm_key(key) not in allowed
        and re.split(r"[.\[]", key, maxsplit=1)[0] not in RESUMABLE_SECTIONS
    ]


# ----------------------------------------------------------------------- the run folder


def earlier_run(folder: Path) -> List[str]:
    """What an earlier fit left in ``folder`` that a new run would replace (for messages).

    Returns:
        List[str]: e.g. ``["checkpoints step_000000012, step_000000024", "metrics.json"]``;
        empty when the folder holds no run.
    """
    from torchrec_ple.train.checkpoint import list_checkpoints

    found = []
    ckpts = [p.name for p in list_checkpoints(Path(folder) / _CHECKPOINT_DIR)]
    if ckpts:
        found.append("checkpoints " + ", ".join(ckpts))
    if (Path(folder) / _METRICS_FILE).is_file():
        found.append(_METRICS_FILE)
    return found


@dataclass
class RunFolder:
    """What ``fit`` does with its folder, decided on rank 0 before any data is read.

    Args:
        path (Path): the folder.
        resume_from (Optional[Path]): the newest complete checkpoint to continue from.
        replace (List[str]): an earlier run that ``--overwrite`` replaces (see
            :func:`earlier_run`); empty when there is none.
        write_spec (bool): write ``spec.yaml`` (a new run, or a run that lacks it).
        lock (Optional[RunLock]): held on rank 0 while the run lives.
    """

    path: Path
    resume_from: Optional[Path] = None
    replace: List[str] = field(default_factory=list)
    write_spec: bool = True
    lock: Optional[RunLock] = None

    def replace_earlier(self, log: Callable[[str], None]) -> None:
        """Remove the earlier run's checkpoints, metrics and TensorBoard events (rank 0).

        Called once the new run's data is read and its transforms fitted: a failure before
        leaves the earlier run whole. Also clears what crashed saves of a run without a
        complete checkpoint left, so a new run is never paired with them.
        """
        if self.resume_from is not None:
            return
        gone = [self.path / _CHECKPOINT_DIR, self.path / _METRICS_FILE]
        if self.replace:
            gone.append(self.path / _TENSORBOARD_DIR)
        for p in gone:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if self.replace:
            log(f"--overwrite: replaced the earlier run in {self.path}: {'; '.join(self.replace)}")


def open_run(
    spec: Any,
    folder: Path,
    *,
    resume: bool,
    overwrite: bool,
    restarted: bool,
    log: Callable[[str], None],
) -> RunFolder:
    """Check, create and lock a run folder, and decide how ``fit`` uses it (rank 0 only).

    Nothing is written but the folder and its lock: a refused ``--resume`` leaves the run
    as it was.

    Args:
        spec (Spec): the spec to train.
        folder (Path): ``--out``.
        resume (bool): continue the run from its newest checkpoint.
        overwrite (bool): replace an earlier run (once the new run's data is read).
        restarted (bool): a ``torchrun`` restart, which may find no checkpoint yet.
        log (Callable[[str], None]): where notices go.

    Raises:
        DataError: the folder cannot be used, is locked, holds an earlier run without
            ``resume``/``overwrite``, or has no checkpoint to resume.
        SpecError: ``resume`` with a spec that differs from the run's in a key that may
            not change.
    """
    folder = Path(folder)
    _check_not_user_spec(folder, getattr(spec, "path", None))
    check_out_folder(folder)
    if resume and not restarted and not folder.is_dir():
        raise DataError(
            file=str(folder), expected="the run folder of a fit to --resume", found="nothing"
        )
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder)
    try:
        run = _decide(spec, RunFolder(folder, lock=lock), resume, overwrite, restarted, log)
    except BaseException:
        lock.release()  # a refused run leaves the folder free at once
        raise
    if lock.took_over:
        log(f"took over {lock.path}: its {_holder_text(lock.took_over)} is no longer running")
    return run


def _decide(
    spec: Any,
    run: RunFolder,
    resume: bool,
    overwrite: bool,
    restarted: bool,
    log: Callable[[str], None],
) -> RunFolder:
    """Fill in ``run`` for a new, replacing or resumed run, or refuse (see :func:`open_run`)."""
    from torchrec_ple.train.checkpoint import latest_checkpoint

    folder = run.path
    earlier = earlier_run(folder)
    if not resume:
        if earlier and not overwrite:
            raise DataError(
                file=str(folder),
                expected="a new or empty run folder",
                found=f"an earlier run ({'; '.join(earlier)})",
                hint="pass --resume to continue it, --overwrite to replace it, or pick a new --out",
            )
        run.replace = earlier
        return run
    run.resume_from = latest_checkpoint(folder / _CHECKPOINT_DIR)
    saved = folder / _SPEC_FILE
    if run.resume_from is None:
        if not restarted:
            raise DataError(
                file=str(folder / _CHECKPOINT_DIR),
                expected="a complete checkpoint to --resume from",
                found="none",
                hint="fit without --resume starts the run",
            )
        log(f"resume: no complete checkpoint under {folder / _CHECKPOINT_DIR} yet; starting over")
        return run
    if saved.is_file():
        changed = spec_changes(spec, saved)
        if changed:
            more = len(changed) - _MAX_NAMED_CHANGES
            found = "; ".join(changed[:_MAX_NAMED_CHANGES]) + (f"; {more} more" if more > 0 else "")
            raise SpecError(
                file=str(saved),
                expected="--resume with the spec the run was trained with",
                found=found,
                hint="only train.epochs, train.max_steps, logging and checkpoint settings, "
                "data paths and table sharding may change; fit into a new --out to train "
                "another spec",
            )
        run.write_spec = False
    else:
        log(f"resume: {saved} is missing; writing the current spec there")
    return run


# -------------------------------------------------------------------------- interrupts


def interrupted_message(folder: Optional[Path], tb: Optional[TracebackType]) -> str:
    """The one line of a ``fit`` ended by Ctrl-C: the step reached and what to resume from.

    Args:
        folder (Optional[Path]): the run folder (``--out``).
        tb (Optional[TracebackType]): the ``KeyboardInterrupt``'s traceback; the step is
            read from the frame of ``trainer.fit`` in it.
    """
    step: Optional[int] = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "fit" and frame.f_globals.get("__name__", "").endswith(
            "train.trainer"
        ):
            value = frame.f_locals.get("step")
            step = value if isinstance(value, int) else step
        tb = tb.tb_next
    where = f"interrupted at step {step}" if step is not None else "interrupted before training"
    newest = None
    if folder is not None:
        from torchrec_ple.train.checkpoint import latest_checkpoint

        newest = latest_checkpoint(Path(folder) / _CHECKPOINT_DIR)
    if newest is None:
        return f"{where}; no checkpoint was written; fit starts the run again"
    return f"{where}; the newest checkpoint is {newest}; fit --resume continues"
