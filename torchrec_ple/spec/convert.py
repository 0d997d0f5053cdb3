"""Helpers that convert plain YAML data into the schema dataclasses."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Dict, Tuple, Union, get_args, get_origin, get_type_hints

from torchrec_ple.spec.schema import FileSpec, Spec

_LOADER_FIELDS: Dict[type, Tuple[str, ...]] = {Spec: ("path", "raw")}  # not YAML keys

_BAD = object()  # a value that failed conversion; its error is already recorded
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # `1e-3`: text in YAML 1.1
_SHORTHANDS: Dict[type, str] = {FileSpec: "path"}  # `train: x.parquet` means `{path: ...}`


@functools.cache
def _fields(cls: type) -> Dict[str, Tuple[str, Any, bool]]:
    """YAML key -> (field name, type, required) of a schema dataclass.

    A trailing underscore field (``in_``) takes the YAML key without it (``in``).
    """
    hints = get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in _LOADER_FIELDS.get(cls, ()):
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name[:-1] if f.name.endswith("_") else f.name] = (f.name, hints[f.name], required)
    return out


def _unoptional(tp: Any) -> Any:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _type_name(tp: Any) -> str:
    tp = _unoptional(tp)
    if get_origin(tp) is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if get_origin(tp) is dict:
        return "mapping"
    if tp in _SHORTHANDS:
        return f"mapping or {_type_name(_fields(tp)[_SHORTHANDS[tp]][1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    names = {int: "int", float: "number", str: "str", bool: "bool", Path: "path", Any: "any value"}
    return names.get(tp, str(tp))


def _is_bad(v: Any) -> bool:
    return v is _BAD or (isinstance(v, list) and any(x is _BAD for x in v))


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))
