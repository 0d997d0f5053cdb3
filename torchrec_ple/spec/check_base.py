"""The checker's reporting and conversion core, shared by the section checks."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Union, get_args, get_origin

from torchrec_ple.spec.convert import (
    _BAD,
    _FLOAT_TEXT,
    _SHORTHANDS,
    _fields,
    _is_bad,
    _type_name,
    _unoptional,
)
from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.keys import KeyPath, _close, _key, key_str
from torchrec_ple.spec.schema import (
    Spec,
)


class Checks:
    """Converts plain data into schema dataclasses and records located errors."""

    def __init__(
        self,
        raw: Any,
        lines: Dict[KeyPath, int],
        overridden: Set[KeyPath],
        file: Optional[str],
        base: Path,
    ) -> None:
        self.raw, self.lines, self.overridden = raw, lines, overridden
        self.file, self.base = file, base
        self.errors: List[SpecError] = []

    def from_override(self, path: KeyPath) -> bool:
        return any(path[:i] in self.overridden for i in range(len(path) + 1))

    def line(self, path: KeyPath) -> Optional[int]:
        if self.from_override(path):
            return None
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def err(
        self,
        path: KeyPath,
        expected: str,
        found: Optional[str] = None,
        *,
        did_you_mean: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        if self.from_override(path):
            hint = f"{hint}; set by --set" if hint else "set by --set"
        self.errors.append(
            SpecError(
                key_str(path),
                expected,
                found,
                file=self.file,
                line=self.line(path),
                did_you_mean=did_you_mean,
                hint=hint,
            )
        )

    def given(self, path: KeyPath) -> bool:
        """Whether the YAML (after overrides) spells out this key."""
        cur = self.raw
        for p in path:
            if isinstance(cur, dict) and p in cur:
                cur = cur[p]
            elif isinstance(cur, list) and isinstance(p, int) and p < len(cur):
                cur = cur[p]
            else:
                return False
        return True

    def choice(self, path: KeyPath, value: str, choices: Sequence[str]) -> bool:
        if value in choices:
            return True
        self.err(
            path,
            "one of " + ", ".join(choices),
            format_value(value),
            did_you_mean=_close(value, choices),
        )
        return False

    def at_least(self, path: KeyPath, value: Optional[int], minimum: int = 1) -> None:
        if value is not None and value < minimum:
            self.err(path, f"int >= {minimum}", str(value))

    def within(self, path: KeyPath, ok: bool, expected: str, value: float) -> None:
        if not ok:
            self.err(path, expected, format_value(value))

    def convert(self, value: Any, tp: Any, path: KeyPath) -> Any:
        if tp is Any:
            return value
        if get_origin(tp) is Union:
            return None if value is None else self.convert(value, _unoptional(tp), path)
        if dataclasses.is_dataclass(tp):
            obj = self.mapping(value, tp, path)
            return obj if obj is _BAD else tp(**obj)
        if get_origin(tp) is dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                self.err(path, _type_name(tp), format_value(value))
                return _BAD
            vt = get_args(tp)[1]
            return {k: self.convert(v, vt, path + (k,)) for k, v in value.items()}
        if get_origin(tp) is list:
            if not isinstance(value, list):
                self.err(path, _type_name(tp), format_value(value))
                return _BAD
            item = get_args(tp)[0]
            return [self.convert(v, item, path + (i,)) for i, v in enumerate(value)]
        if tp is bool and isinstance(value, bool):
            return value
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is str and isinstance(value, str):
            return value
        if tp is float:
            return self.number(value, path)
        if tp is Path and isinstance(value, str) and value:
            return self.resolve(value, path)
        self.err(path, _type_name(tp), format_value(value))
        return _BAD

    def number(self, value: Any, path: KeyPath) -> Any:
        # PyYAML (YAML 1.1) reads `1e-3` as a string: accept numeric text for floats.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok or (isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()) is not None)
        try:
            number = float(value) if ok else math.nan
        except (OverflowError, ValueError):
            number = math.nan
        if ok and math.isfinite(number):
            return number
        self.err(path, "a finite number" if ok else "number", format_value(value))
        return _BAD

    def resolve(self, value: str, path: KeyPath) -> Path:
        """A YAML path relative to the spec folder (a ``--set`` path: relative to cwd)."""
        try:
            value = os.path.expanduser(value)
        except (ValueError, RuntimeError, KeyError):
            pass  # an odd `~user`: keep the text as is
        p = Path(value)
        if not p.is_absolute():
            p = (Path.cwd() if self.from_override(path) else self.base) / p
        return Path(os.path.abspath(p))

    def mapping(self, value: Any, cls: type, path: KeyPath) -> Any:
        """Keyword arguments of ``cls`` from a YAML mapping, or ``_BAD``.

        Fields that fail to convert are left out (``_BAD``) and make the result ``_BAD``
        unless ``cls`` is :class:`Spec`, whose sections are checked one by one.
        """
        if value is None:  # an empty section (`model:`) means all defaults
            value = {}
        if isinstance(value, str) and cls in _SHORTHANDS:
            value = {_SHORTHANDS[cls]: value}
        if not isinstance(value, dict):
            self.err(path, _type_name(cls), format_value(value))
            return _BAD
        fields = _fields(cls)
        bad = False
        for k in value:
            if k not in fields:
                p = path + (_key(k),)
                self.err(
                    p,
                    "one of " + ", ".join(fields),
                    format_value(k),
                    did_you_mean=_close(k, fields),
                )
                bad = True
        kwargs: Dict[str, Any] = {}
        for key, (name, tp, required) in fields.items():
            if key not in value:
                if required:
                    self.err(path + (key,), f"{_type_name(tp)} (required key)", "nothing")
                    bad = True
                continue
            kwargs[name] = self.convert(value[key], tp, path + (key,))
            bad = bad or _is_bad(kwargs[name])
        if cls is Spec:
            return kwargs
        return _BAD if bad else kwargs

    def raw_at(self, path: KeyPath) -> Any:
        cur = self.raw
        for p in path:
            if isinstance(cur, dict):
                cur = cur.get(p)
            elif isinstance(cur, list) and isinstance(p, int) and p < len(cur):
                cur = cur[p]
            else:
                return None
        return cur

    def unique_names(self, P: KeyPath, names: List[str], what: str) -> None:
        seen: Dict[str, int] = {}
        for i, n in enumerate(names):
            if not n:
                self.err(P + (i,), f"a non-empty {what}", "''")
            elif n in seen:
                self.err(
                    P + (i,),
                    f"a unique {what}",
                    format_value(n),
                    hint=f"already at index {seen[n]}",
                )
            seen.setdefault(n, i)

    def column_path(self, i: int) -> KeyPath:
        """Where a feature's column is spelled: ``column``, or ``name`` when defaulted."""
        path: KeyPath = ("features", i, "column")
        return path if self.given(path) else ("features", i, "name")
