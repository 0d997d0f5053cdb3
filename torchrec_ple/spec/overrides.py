"""``--set key.path=value`` overrides: parsed as YAML, applied to the plain spec data.

Every step of a key path is checked against the schema before the value is set, so a
typo (``train.epoch=3``) is a one-line error with a "did you mean", and a value set by an
override is remembered (its errors say "set by --set", its relative paths resolve against
the working directory).

Example::

    raw = {"train": {"epochs": 1}}
    overridden = set()
    apply_override(raw, *parse_override("train.epochs=3"), overridden)
    raw  # {"train": {"epochs": 3}}
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any, Dict, List, Sequence, Set, Tuple, Union, get_args, get_origin

import yaml

from torchrec_ple.spec.convert import SHORTHANDS, type_name, unoptional, yaml_fields
from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.keys import KeyPath, close_match, key_str
from torchrec_ple.spec.schema import Spec

__all__ = ["OverrideArg", "apply_override", "apply_overrides", "parse_key", "parse_override"]

# A ``key.path=value`` string, or an already parsed (key, value) pair.
OverrideArg = Union[str, Tuple[str, Any]]

_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def parse_key(key: str) -> KeyPath:
    """``"tasks[1].weight.decay"`` -> ``("tasks", 1, "weight", "decay")``.

    Raises:
        SpecError: a key that is not a dotted path of names with ``[i]`` indices.
    """
    parts: List[Union[str, int]] = []
    for part in key.split("."):
        m = _KEY_PART.fullmatch(part)
        if m is None:
            raise SpecError(key, "a key path like train.epochs or tasks[1].weight.decay", repr(key))
        parts.append(m.group(1))
        parts += [int(i) for i in re.findall(r"\d+", m.group(2))]
    return tuple(parts)


def parse_override(s: str) -> Tuple[str, Any]:
    """Split a ``--set key.path=value`` argument; the value is parsed as YAML.

    ``"tasks[1].weight.decay=0.99"`` -> ``("tasks[1].weight.decay", 0.99)``.
    """
    key, sep, text = s.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError("", "an override key.path=value", repr(s))
    parse_key(key)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(key, "a YAML value", f"{text!r} ({problem})") from None
    return key, value


def apply_override(raw: Dict[Any, Any], key: str, value: Any, overridden: Set[KeyPath]) -> None:
    """Set ``key`` in ``raw``, checking every step against the schema.

    Args:
        raw (Dict[Any, Any]): the plain spec data, changed in place.
        key (str): the key path (``tasks[1].weight.decay``).
        value (Any): the value (deep-copied in).
        overridden (Set[KeyPath]): gets the key path, and any mapping created on the way.

    Raises:
        SpecError: a key the schema does not have, an index past a list's end, or a key
            below a value that is not a mapping.
    """
    path = parse_key(key)
    tp: Any = Spec
    holder: Any = [raw]  # the container of the current value, and its slot
    slot: Union[str, int] = 0
    for depth, tok in enumerate(path):
        here, parent = key_str(path[: depth + 1]), path[:depth]
        tp = unoptional(tp)
        cur = holder.get(slot) if isinstance(holder, dict) else holder[slot]
        if isinstance(tok, str):
            if not dataclasses.is_dataclass(tp):
                expected = f"no key below {key_str(parent)} (a {type_name(tp)})"
                raise SpecError(here, expected, repr(tok))
            fields = yaml_fields(tp)
            if tok not in fields:
                raise SpecError(
                    here,
                    "one of " + ", ".join(fields),
                    repr(tok),
                    did_you_mean=close_match(tok, fields),
                )
            if cur is None:
                cur = holder[slot] = {}
                overridden.add(parent)
            elif isinstance(cur, str) and tp in SHORTHANDS:
                cur = holder[slot] = {SHORTHANDS[tp]: cur}
            elif not isinstance(cur, dict):
                raise SpecError(key_str(parent), type_name(tp), format_value(cur))
            tp = fields[tok][1]
        else:
            if get_origin(tp) is not list:
                raise SpecError(here, f"a key, not an index ({key_str(parent)} is not a list)")
            if not isinstance(cur, list) or tok >= len(cur):
                size = len(cur) if isinstance(cur, list) else 0
                raise SpecError(here, f"an index below {size}", str(tok))
            tp = get_args(tp)[0]
        holder, slot = cur, tok
    holder[slot] = copy.deepcopy(value)
    overridden.add(path)


def apply_overrides(
    raw: Any, overrides: Sequence[OverrideArg]
) -> Tuple[Set[KeyPath], List[SpecError]]:
    """Apply overrides in order to ``raw`` (in place, when it is a mapping).

    Returns:
        Tuple[Set[KeyPath], List[SpecError]]: the overridden key paths, and one error
        per override that failed (``(in --set)`` unless it says more).
    """
    errors: List[SpecError] = []
    overridden: Set[KeyPath] = set()
    for o in overrides:
        try:
            key, value = o if isinstance(o, tuple) else parse_override(o)
            if isinstance(raw, dict):
                apply_override(raw, key, value, overridden)
        except SpecError as e:  # name where the problem came from
            hint = e.hint or "in --set"
            errors.append(
                SpecError(e.key, e.expected, e.found, did_you_mean=e.did_you_mean, hint=hint)
            )
    return overridden, errors
