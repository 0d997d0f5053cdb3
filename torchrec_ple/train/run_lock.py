"""The lock of a run folder (``<folder>/fit.lock``): one ``fit`` at a time writes it.

``fit.lock`` names the holder's pid and host; a lock left by a process that is gone
(``kill -9``) is taken over, and the log says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import weakref
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from torchrec_ple.spec.errors import DataError

__all__ = ["LOCK_FILE", "RunLock", "holder_text", "release_all"]

LOCK_FILE = "fit.lock"


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


def holder_text(holder: Dict[str, Any]) -> str:
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
                    found=f"locked by {holder_text(holder)}",
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
