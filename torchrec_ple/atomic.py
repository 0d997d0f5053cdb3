"""Crash-safe file writes (standard library only, importable from every layer)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and a rename.

    A crash, ``kill -9`` or a full disk leaves the previous content of ``path`` whole,
    never a truncated file; a failed write removes its temporary file.

    Args:
        path (Path): the file to (re)write.
        text (str): its new content.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
