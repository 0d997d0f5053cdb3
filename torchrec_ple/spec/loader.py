"""Load a spec YAML into :class:`~torchrec_ple.spec.schema.Spec`, with located errors.

The steps, each in its own module:

1. :func:`~torchrec_ple.spec.yaml_tree.read_yaml`: the YAML as plain data plus the line
   of every key path (PyYAML's ``SafeLoader``: nothing is ever evaluated);
2. :func:`~torchrec_ple.spec.overrides.apply_overrides`: the ``--set key.path=value``
   overrides, each step checked against the schema;
3. :func:`~torchrec_ple.spec.feast_tags.with_feast_tags`: for ``data.source: feast``,
   embedding settings from the Feast field tags;
4. :class:`~torchrec_ple.spec.checker.SpecChecker`: conversion into the dataclasses, the
   defaults pass (:mod:`~torchrec_ple.spec.defaults`) and every section's checks.

Every problem is a one-line :class:`SpecError`; :func:`parse_spec` raises the first,
:func:`validate_all` returns all it can find.

Example::

    spec = load_spec("ple.yaml", overrides=["train.epochs=3", "tasks[1].weight.decay=0.99"])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from torchrec_ple.spec.check_data import synthetic_columns
from torchrec_ple.spec.checker import SpecChecker
from torchrec_ple.spec.errors import SpecError
from torchrec_ple.spec.feast_tags import with_feast_tags
from torchrec_ple.spec.keys import KeyPath  # noqa: F401  (re-exported)
from torchrec_ple.spec.overrides import OverrideArg, apply_overrides, parse_override
from torchrec_ple.spec.schema import Spec
from torchrec_ple.spec.yaml_tree import read_yaml

__all__ = [
    "collect",
    "load_spec",
    "parse_override",
    "parse_spec",
    "plain",
    "synthetic_columns",
    "validate_all",
]

_Checker = SpecChecker  # the former name, for code importing it from here


def collect(
    text: str, path: Optional[Union[str, Path]], overrides: Sequence[OverrideArg]
) -> Tuple[Optional[Spec], List[SpecError]]:
    """The spec of YAML text and every problem found (the spec is None unless none).

    Args: see :func:`parse_spec`.
    """
    file = str(path) if path is not None else None
    try:
        raw, lines = read_yaml(text, file)
    except SpecError as e:
        return None, [e]
    overridden, errors = apply_overrides(raw, overrides)
    base = Path(os.path.abspath(path)).parent if path is not None else Path.cwd()
    if not errors:
        try:
            raw = with_feast_tags(raw, base)
        except SpecError as e:
            return None, [SpecError(e.key, e.expected, e.found, file=file, hint=e.hint)]
    checker = SpecChecker(raw, lines, overridden, file, base)
    spec = checker.build()
    errors += checker.errors
    if spec is not None and not errors:
        spec.path = Path(path) if path is not None else None
        return spec, []
    return None, errors


def _read(path: Union[str, Path]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(file=str(path), expected="an existing spec file", found="nothing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(
            file=str(path), expected="a readable UTF-8 spec file", found=str(e)
        ) from None


def parse_spec(
    text: str, path: Optional[Union[str, Path]] = None, overrides: Sequence[OverrideArg] = ()
) -> Spec:
    """Parse and validate spec YAML text.

    Args:
        text (str): the YAML.
        path (Optional[Path]): the file it came from: named in errors, and relative data
            paths resolve against its folder (else against the working directory).
        overrides (Sequence[str]): ``key.path=value`` strings (or parsed pairs), applied
            in order before validation.

    Raises:
        SpecError: the first problem found.
    """
    spec, errors = collect(text, path, overrides)
    if errors:
        raise errors[0]
    assert spec is not None
    return spec


def load_spec(path: Union[str, Path], overrides: Sequence[OverrideArg] = ()) -> Spec:
    """Read, parse and validate a spec file (see :func:`parse_spec`)."""
    return parse_spec(_read(path), Path(path), overrides)


def validate_all(path: Union[str, Path], overrides: Sequence[OverrideArg] = ()) -> List[SpecError]:
    """Every problem found in a spec file (empty when it loads), for a ``validate`` command.

    Independent problems are all reported (at least one per section); problems that
    follow from an earlier one are not.
    """
    try:
        text = _read(path)
    except SpecError as e:
        return [e]
    return collect(text, Path(path), overrides)[1]


def plain(obj: Any) -> Any:
    """A spec mapping (``Spec.raw``) with paths as strings, ready for ``yaml.safe_dump``."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
