"""Key paths into the spec (``tasks[1].weight.decay``) and close-match hints."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional, Tuple, Union

from torchrec_ple.spec.errors import format_value

__all__ = ["KeyPath", "close_match", "key_part", "key_str"]

KeyPath = Tuple[Union[str, int], ...]


def key_str(path: KeyPath) -> str:
    """``("tasks", 1, "weight")`` -> ``"tasks[1].weight"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def close_match(word: Any, choices: Iterable[str]) -> Optional[str]:
    """The choice closest to ``word`` (a "did you mean"), or None when none is close."""
    hits = difflib.get_close_matches(str(word), list(choices), n=1)
    return hits[0] if hits else None


def key_part(k: Any) -> str:
    """A YAML mapping key as a key-path part: non-string keys (``1:``, ``yes:``) as text."""
    return k if isinstance(k, str) else format_value(k)


# The former private names, for section checks not yet moved to the public ones.
_close = close_match
_key = key_part
