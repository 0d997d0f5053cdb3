"""The checker's reporting core, shared by the section checks.

:class:`Checks` records located, one-line :class:`~torchrec_ple.spec.errors.SpecError` errors
(``err``) and offers the small checks every section uses (``choice``, ``at_least``,
``within``, ``unique_names``). The conversion of plain data into dataclasses is
:class:`~torchrec_ple.spec.convert.Converter`'s; the section checks are mixins
(``check_data.DataChecks``, ...) composed by :class:`~torchrec_ple.spec.checker.SpecChecker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.keys import KeyPath, close_match, key_str


class Checks:
    """Records located errors of a spec and holds what locating them needs.

    Args:
        raw (Any): the YAML data after ``--set`` overrides (and Feast tags).
        lines (Dict[KeyPath, int]): the 1-based line of every key path of the YAML.
        overridden (Set[KeyPath]): key paths set by ``--set`` (reported without a line).
        file (Optional[str]): the spec file, named in errors.
        base (Path): the folder relative data paths resolve against.
    """

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
            did_you_mean=close_match(value, choices),
        )
        return False

    def at_least(self, path: KeyPath, value: Optional[int], minimum: int = 1) -> None:
        if value is not None and value < minimum:
            self.err(path, f"int >= {minimum}", str(value))

    def within(self, path: KeyPath, ok: bool, expected: str, value: float) -> None:
        if not ok:
            self.err(path, expected, format_value(value))

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
