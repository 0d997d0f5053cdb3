"""One-line, located errors for specs (:class:`SpecError`) and data (:class:`DataError`).

Both render as ``<where>: expected <what>, found <what>`` so a user sees in one line
where the problem is, what was wanted and what was there.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["SpecError", "DataError", "first_line", "format_value"]


def format_value(value: Any, limit: int = 60) -> str:
    """A short YAML-like rendering of a found value (``'abc'``, ``null``, ``[1, 2]``)."""

    def flow(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return repr(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{flow(k)}: {flow(x)}" for k, x in v.items()) + "}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(flow(x) for x in v) + "]"
        return str(v)

    text = flow(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(value, dict):
        return f"mapping {text}"
    if isinstance(value, (list, tuple)):
        return f"list {text}"
    return text


def first_line(e: BaseException, limit: Optional[int] = None) -> str:
    """The first line of an exception's message, for a one-line error.

    Third-party errors (pyarrow, Feast, torch) often span many lines; a ``found`` part of
    a :class:`SpecError` or :class:`DataError` takes their first.

    Args:
        e (BaseException): the exception.
        limit (Optional[int]): cut the line to at most this many characters.

    Returns:
        str: the first non-empty line (stripped), or the exception's type name when the
        message is empty.
    """
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if limit is None else line[:limit]


def _render(
    where: str,
    expected: str,
    found: Optional[str],
    did_you_mean: Optional[str],
    hint: Optional[str],
) -> str:
    msg = where
    if expected:
        msg += (": " if msg else "") + f"expected {expected}"
        if found is not None:
            msg += f", found {found}"
    elif found is not None:
        msg += (": " if msg else "") + f"found {found}"
    if did_you_mean is not None:
        msg += f" (did you mean '{did_you_mean}'?)"
    if hint:
        msg += f" ({hint})"
    return msg.translate(_ONE_LINE)  # user names may hold line breaks; the message may not


# Every character str.splitlines() breaks on, shown escaped.
_ONE_LINE = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class SpecError(ValueError):
    """A problem in a spec file, located by file, line and key path.

    ``str(err)`` is one line: ``<file>:<line>: <key>: expected <expected>, found <found>``
    plus ``(did you mean 'x'?)`` where a close name exists; unknown parts are left out.

    Args:
        key (str): key path such as ``tasks[1].sample_space.column``; ``""`` for the root.
        expected (str): what was wanted, e.g. ``int >= 1``.
        found (Optional[str]): what was there, already formatted (see :func:`format_value`).
        file (Optional[str]): the spec file.
        line (Optional[int]): 1-based line in ``file``.
        did_you_mean (Optional[str]): a close valid name.
        hint (Optional[str]): a short extra explanation, shown in parentheses.
    """

    def __init__(
        self,
        key: str = "",
        expected: str = "",
        found: Optional[str] = None,
        *,
        file: Optional[str] = None,
        line: Optional[int] = None,
        did_you_mean: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        self.key = key
        self.expected = expected
        self.found = found
        self.file = file
        self.line = line
        self.did_you_mean = did_you_mean
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        else:
            where = "" if self.line is None else f"line {self.line}"
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        return _render(where, self.expected, self.found, self.did_you_mean, self.hint)

    def __reduce__(self):  # keep every attribute across pickling (e.g. from data workers)
        return (type(self), (), dict(self.__dict__))


class DataError(ValueError):
    """A problem in the data a spec reads, located by file, row and column.

    ``str(err)`` is one line: ``<file>, row <row>: column '<column>': expected <expected>,
    found <found>``; unknown parts are left out.

    Args:
        column (Optional[str]): the raw column.
        expected (str): what was wanted.
        found (Optional[str]): what was there, already formatted.
        file (Optional[str]): the data file or directory.
        row (Optional[int]): 0-based data row (not counting a header).
        did_you_mean (Optional[str]): a close valid name (e.g. of a column).
        hint (Optional[str]): a short extra explanation, shown in parentheses.
    """

    def __init__(
        self,
        column: Optional[str] = None,
        expected: str = "",
        found: Optional[str] = None,
        *,
        file: Optional[str] = None,
        row: Optional[int] = None,
        did_you_mean: Optional[str] = None,
        hint: Optional[str] = None,
    ) -> None:
        self.column = column
        self.expected = expected
        self.found = found
        self.file = file
        self.row = row
        self.did_you_mean = did_you_mean
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file if self.row is None else f"{self.file}, row {self.row}")
        elif self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column '{self.column}'")
        return _render(": ".join(parts), self.expected, self.found, self.did_you_mean, self.hint)

    def __reduce__(self):
        return (type(self), (), dict(self.__dict__))
