"""Plain YAML data -> the schema dataclasses, generically (``dataclasses.fields`` + hints).

:class:`Converter` walks a value against a type hint: dataclasses from mappings, lists,
string-keyed dicts, ints, floats (YAML 1.1's numeric text such as ``1e-3`` included),
strings and paths (resolved against the spec folder). A value that does not fit is reported
once through the checker's ``err`` and becomes :data:`BAD`, so the checks skip it.

Example::

    converter = Converter(checks)                   # checks: the spec's Checks
    sections = converter.mapping(raw, Spec, ())     # keyword arguments of Spec
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple, Union, get_args, get_origin, get_type_hints

from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath, close_match, key_part
from torchrec_ple.spec.schema import FileSpec, Spec

if TYPE_CHECKING:  # check_base holds the reporting; it does not import this module
    from torchrec_ple.spec.check_base import Checks

__all__ = [
    "BAD",
    "Converter",
    "FLOAT_TEXT",
    "SHORTHANDS",
    "is_bad",
    "is_scalar",
    "type_name",
    "unoptional",
    "yaml_fields",
]

LOADER_FIELDS: Dict[type, Tuple[str, ...]] = {Spec: ("path", "raw")}  # not YAML keys

BAD = object()  # a value that failed conversion; its error is already recorded
FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # `1e-3`: text in YAML 1.1
SHORTHANDS: Dict[type, str] = {FileSpec: "path"}  # `train: x.parquet` means `{path: ...}`


@functools.cache
def yaml_fields(cls: type) -> Dict[str, Tuple[str, Any, bool]]:
    """YAML key -> (field name, type, required) of a schema dataclass.

    A trailing underscore field (``in_``) takes the YAML key without it (``in``).
    """
    hints = get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in LOADER_FIELDS.get(cls, ()):
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name[:-1] if f.name.endswith("_") else f.name] = (f.name, hints[f.name], required)
    return out


def unoptional(tp: Any) -> Any:
    """``Optional[X]`` -> ``X``; other types unchanged."""
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def type_name(tp: Any) -> str:
    """What a YAML value of type ``tp`` looks like, for "expected ..." (``list of int``)."""
    tp = unoptional(tp)
    if get_origin(tp) is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if get_origin(tp) is dict:
        return "mapping"
    if tp in SHORTHANDS:
        return f"mapping or {type_name(yaml_fields(tp)[SHORTHANDS[tp]][1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    names = {int: "int", float: "number", str: "str", bool: "bool", Path: "path", Any: "any value"}
    return names.get(tp, str(tp))


def is_bad(v: Any) -> bool:
    """Whether a converted value (or an item of a converted list) failed."""
    return v is BAD or (isinstance(v, list) and any(x is BAD for x in v))


def is_scalar(v: Any) -> bool:
    """A plain YAML scalar: str, number or bool."""
    return isinstance(v, (str, int, float, bool))


class Converter:
    """Converts plain data into schema dataclasses; problems go to ``checks.err``.

    Args:
        checks (Checks): the spec's checker: its ``err`` records problems, its
            ``from_override`` tells ``--set`` values (relative paths: against the working
            directory) from YAML ones (against ``checks.base``, the spec's folder).
    """

    def __init__(self, checks: Checks) -> None:
        self.checks = checks

    def convert(self, value: Any, tp: Any, path: KeyPath) -> Any:
        """``value`` as type ``tp``, or :data:`BAD` (reported)."""
        if tp is Any:
            return value
        if get_origin(tp) is Union:
            return None if value is None else self.convert(value, unoptional(tp), path)
        if dataclasses.is_dataclass(tp):
            obj = self.mapping(value, tp, path)
            return obj if obj is BAD else tp(**obj)
        if get_origin(tp) is dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                self.checks.err(path, type_name(tp), format_value(value))
                return BAD
            vt = get_args(tp)[1]
            return {k: self.convert(v, vt, path + (k,)) for k, v in value.items()}
        if get_origin(tp) is list:
            if not isinstance(value, list):
                self.checks.err(path, type_name(tp), format_value(value))
                return BAD
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
        self.checks.err(path, type_name(tp), format_value(value))
        return BAD

    def number(self, value: Any, path: KeyPath) -> Any:
        """A finite float from a number or numeric text, or :data:`BAD` (reported)."""
        # PyYAML (YAML 1.1) reads `1e-3` as a string: accept numeric text for floats.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok or (isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()) is not None)
        try:
            number = float(value) if ok else math.nan
        except (OverflowError, ValueError):
            number = math.nan
        if ok and math.isfinite(number):
            return number
        self.checks.err(path, "a finite number" if ok else "number", format_value(value))
        return BAD

    def resolve(self, value: str, path: KeyPath) -> Path:
        """A YAML path relative to the spec folder (a ``--set`` path: relative to cwd)."""
        try:
            value = os.path.expanduser(value)
        except (ValueError, RuntimeError, KeyError):
            pass  # an odd `~user`: keep the text as is
        p = Path(value)
        if not p.is_absolute():
            p = (Path.cwd() if self.checks.from_override(path) else self.checks.base) / p
        return Path(os.path.abspath(p))

    def mapping(self, value: Any, cls: type, path: KeyPath) -> Any:
        """Keyword arguments of ``cls`` from a YAML mapping, or :data:`BAD`.

        Fields that fail to convert are left out (:data:`BAD`) and make the result
        :data:`BAD` unless ``cls`` is :class:`Spec`, whose sections are checked one by one.
        """
        if value is None:  # an empty section (`model:`) means all defaults
            value = {}
        if isinstance(value, str) and cls in SHORTHANDS:
            value = {SHORTHANDS[cls]: value}
        if not isinstance(value, dict):
            self.checks.err(path, type_name(cls), format_value(value))
            return BAD
        fields = yaml_fields(cls)
        bad = False
        for k in value:
            if k not in fields:
                self.checks.err(
                    path + (key_part(k),),
                    "one of " + ", ".join(fields),
                    format_value(k),
                    did_you_mean=close_match(k, fields),
                )
                bad = True
        kwargs: Dict[str, Any] = {}
        for key, (name, tp, required) in fields.items():
            if key not in value:
                if required:
                    self.checks.err(path + (key,), f"{type_name(tp)} (required key)", "nothing")
                    bad = True
                continue
            kwargs[name] = self.convert(value[key], tp, path + (key,))
            bad = bad or is_bad(kwargs[name])
        if cls is Spec:
            return kwargs
        return BAD if bad else kwargs


# The former private names, for section checks not yet moved to the public ones.
_BAD = BAD
_FLOAT_TEXT = FLOAT_TEXT
_SHORTHANDS = SHORTHANDS
_fields = yaml_fields
_unoptional = unoptional
_type_name = type_name
_is_bad = is_bad
_is_scalar = is_scalar
