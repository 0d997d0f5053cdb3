"""Output path arguments (``fit --out``, ``export --out``, ``predict --output``), checked
before any work: not empty, not a file or under one, writable, and never the user's spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from torchrec_ple.spec.errors import DataError

__all__ = ["check_out_arg", "check_out_file", "check_out_folder"]

# The files fit writes at the top of its folder (see :class:`~torchrec_ple.train.run_dir.RunDir`);
# named here so the CLI can check --out without importing torch.
_SPEC_FILE, _TRANSFORMS_FILE, _METRICS_FILE = "spec.yaml", "transforms.json", "metrics.json"


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
