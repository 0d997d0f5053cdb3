"""Key paths into the spec (``tasks[1].weight.decay``) and close-match hints."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional, Tuple, Union

from torchrec_ple.spec.errors import format_value

KeyPath = Tuple[Union[str, int], ...]


def key_str(path: KeyPath) -> str:
    """``("tasks", 1, "weight")`` -> ``"tasks[1].weight"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def _close(word: Any, choices: Iterable[str]) -> Optional[str]:
    hits = difflib.get_close_matches(str(word), list(choices), n=1)
    return hits[0] if hits else None


def _key(k: Any) -> str:
    # Mapping keys become path parts; non-string YAML keys (`1:`, `yes:`) are shown as text.
    return k if isinstance(k, str) else format_value(k)
