"""``<out>/fit.log``: rank 0's console lines of every ``fit`` of a run folder, kept in it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, List, Optional

__all__ = ["FIT_LOG", "RunLog"]

FIT_LOG = "fit.log"


class RunLog:
    """A ``log`` callable that prints and, once attached, appends each line to a file.

    Lines logged before :meth:`attach` (while the run folder was being checked) are
    kept and written first, so the file holds everything the console showed.

    Args:
        echo (Callable[[str], None]): where lines go first (the console). Default: print.

    Example::

        log = RunLog(print)
        log("checking the folder")
        log.attach(out / "fit.log", "fit (new run)")  # appends a header, then the line above
    """

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self._echo = echo
        self._path: Optional[Path] = None
        self._pending: List[str] = []

    def attach(self, path: Path, what: str) -> None:
        """Append a header line naming this invocation, then every line so far, to ``path``."""
        self._path = Path(path)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        header = f"==== {stamp} {what} (pid {os.getpid()} on {socket.gethostname()}) ===="
        self._write([header, *self._pending])
        self._pending = []

    def __call__(self, line: str) -> None:
        self._echo(line)
        if self._path is None:
            self._pending.append(line)
        else:
            self._write([line])

    def _write(self, lines: List[str]) -> None:
        assert self._path is not None
        try:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write("".join(f"{line}\n" for line in lines))
        except OSError:
            pass  # a full disk must not end a run: the console still has the line
