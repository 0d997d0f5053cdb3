"""Load a spec YAML into :class:`~torchrec_ple.spec.schema.Spec`, with located errors.

The YAML is composed with PyYAML's ``SafeLoader`` (nothing is ever evaluated) and
walked node by node, so every key path keeps its line. The plain data is then converted
into the schema dataclasses generically (``dataclasses.fields`` + type hints) and checked
semantically. Every problem is a one-line :class:`SpecError`; :func:`parse_spec` raises
the first, :func:`validate_all` returns all it can find.

Example::

    spec = load_spec("ple.yaml", overrides=["train.epochs=3", "tasks[1].weight.decay=0.99"])
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from pathlib import Path
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
    get_args,
    get_origin,
)

import yaml

from torchrec_ple.spec.check_data import DataChecks, synthetic_columns
from torchrec_ple.spec.check_features import FeatureChecks
from torchrec_ple.spec.check_model import ModelChecks
from torchrec_ple.spec.check_tasks import TaskChecks
from torchrec_ple.spec.check_train import TrainChecks
from torchrec_ple.spec.convert import _BAD, _SHORTHANDS, _fields, _is_bad, _type_name, _unoptional
from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.keys import KeyPath, _close, _key, key_str
from torchrec_ple.spec.schema import (
    ModelSpec,
    Spec,
    TrainSpec,
)

__all__ = ["load_spec", "parse_spec", "parse_override", "validate_all", "synthetic_columns"]

OverrideArg = Union[str, Tuple[str, Any]]

# libyaml when available: the same safe constructors, a faster parser.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES = 200_000  # guards against alias bombs ("billion laughs")
_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")

# --------------------------------------------------------------------------- YAML


def _read_yaml(text: str, file: Optional[str]) -> Tuple[Any, Dict[KeyPath, int]]:
    """Plain data of a YAML document and the 1-based line of every key path."""
    lines: Dict[KeyPath, int] = {}
    loader: Optional[yaml.SafeLoader] = None
    try:
        loader = _SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, lines
        lines[()] = node.start_mark.line + 1
        return _Walker(loader, lines, file).walk(node, ()), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        found = re.sub(r"^(but )?found ", "", e.problem or e.context or "an error")
        raise SpecError(
            "", "valid YAML", found, file=file, line=mark.line + 1 if mark else None
        ) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise SpecError("", "valid YAML", e.reason, file=file, line=line) from None
    except yaml.YAMLError as e:
        raise SpecError("", "valid YAML", str(e).replace("\n", " "), file=file) from None
    except RecursionError:
        raise SpecError("", "YAML nested to a reasonable depth", "too deep", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Walker:
    """Turns composed YAML nodes into plain data, recording lines and rejecting oddities."""

    def __init__(self, loader: yaml.SafeLoader, lines: Dict[KeyPath, int], file: Optional[str]):
        self.loader, self.lines, self.file = loader, lines, file
        self.budget = _MAX_NODES
        self.active: Set[int] = set()  # nodes on the current path (recursive aliases)
        self.own_keys: Dict[int, Set[int]] = {}  # mapping -> its own key nodes (not merged)

    def fail(self, node: yaml.Node, path: KeyPath, expected: str, found: str) -> SpecError:
        line = node.start_mark.line + 1
        return SpecError(key_str(path), expected, found, file=self.file, line=line)

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError) as e:  # e.g. a date like 2020-13-45
            raise self.fail(node, path, "a valid YAML scalar", f"{node.value!r} ({e})") from None

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise self.fail(node, path, "a spec of reasonable size", "too many YAML nodes")
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            raise self.fail(node, path, "YAML without recursive aliases", "an alias of a parent")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != "tag:yaml.org,2002:seq":
                    raise self.fail(node, path, "a plain YAML list", f"tag {node.tag}")
                out = []
                for i, item in enumerate(node.value):
                    self.lines.setdefault(path + (i,), item.start_mark.line + 1)
                    out.append(self.walk(item, path + (i,)))
                return out
            if node.tag != "tag:yaml.org,2002:map":
                raise self.fail(node, path, "a plain YAML mapping", f"tag {node.tag}")
            if id(node) not in self.own_keys:
                self.own_keys[id(node)] = {id(k) for k, _ in node.value}
                self.loader.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
            own = self.own_keys[id(node)]
            out_map: Dict[Any, Any] = {}
            seen: Set[Any] = set()
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    raise self.fail(k, path, "a plain key", "a mapping or list used as a key")
                key = self.scalar(k, path)
                p = path + (_key(key),)
                if id(k) in own:
                    if key in seen:
                        raise self.fail(k, p, "each key once", f"duplicate key {format_value(key)}")
                    seen.add(key)
                # Merged keys come first, so the mapping's own keys win, as in safe_load.
                self.lines[p] = k.start_mark.line + 1
                out_map[key] = self.walk(v, p)
            return out_map
        finally:
            self.active.discard(id(node))


# --------------------------------------------------------------------------- types


# --------------------------------------------------------------------------- overrides


def _parse_key(key: str) -> KeyPath:
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
    _parse_key(key)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(key, "a YAML value", f"{text!r} ({problem})") from None
    return key, value


def _apply_override(raw: Dict[Any, Any], key: str, value: Any, overridden: Set[KeyPath]) -> None:
    """Set ``key`` in ``raw``, checking every step against the schema."""
    path = _parse_key(key)
    tp: Any = Spec
    holder: Any = [raw]  # the container of the current value, and its slot
    slot: Union[str, int] = 0
    for depth, tok in enumerate(path):
        here, parent = key_str(path[: depth + 1]), path[:depth]
        tp = _unoptional(tp)
        cur = holder.get(slot) if isinstance(holder, dict) else holder[slot]
        if isinstance(tok, str):
            if not dataclasses.is_dataclass(tp):
                expected = f"no key below {key_str(parent)} (a {_type_name(tp)})"
                raise SpecError(here, expected, repr(tok))
            fields = _fields(tp)
            if tok not in fields:
                raise SpecError(
                    here, "one of " + ", ".join(fields), repr(tok), did_you_mean=_close(tok, fields)
                )
            if cur is None:
                cur = holder[slot] = {}
                overridden.add(parent)
            elif isinstance(cur, str) and tp in _SHORTHANDS:
                cur = holder[slot] = {_SHORTHANDS[tp]: cur}
            elif not isinstance(cur, dict):
                raise SpecError(key_str(parent), _type_name(tp), format_value(cur))
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


# --------------------------------------------------------------------------- checker


class _Checker(DataChecks, FeatureChecks, TaskChecks, ModelChecks, TrainChecks):
    """Converts plain data into a :class:`Spec` and validates it, collecting errors."""

    # -- reporting

    # -- generic conversion

    # -- the whole spec

    def build(self) -> Optional[Spec]:
        if not isinstance(self.raw, dict):
            found = "an empty document" if self.raw is None else format_value(self.raw)
            self.err((), "a mapping with keys " + ", ".join(_fields(Spec)), found)
            return None
        sections = self.mapping(self.raw, Spec, ())
        data = sections.get("data", _BAD)
        features = sections.get("features", _BAD)
        tasks = sections.get("tasks", _BAD)
        model = sections.get("model", ModelSpec())
        train = sections.get("train", TrainSpec())
        # Each section is checked when it converted; lists item by item. Cross-section
        # checks need their sections clean, so one mistake is reported once.
        data_ok = self.section(self.check_data, data)
        features_ok = self.section(self.check_features, features)
        tasks_ok = self.section(self.check_tasks, tasks)
        self.section(self.check_model, model)
        train_ok = self.section(self.check_train, train)
        if train_ok and tasks_ok:
            self.check_select(train, tasks, data)
        if features_ok and tasks_ok:
            self.check_leaks(features, tasks)
        if data_ok and data.source == "synthetic":
            good = [
                (i, f)
                for i, f in enumerate(features if isinstance(features, list) else [])
                if f is not _BAD
            ]
            self.check_synthetic(data.synthetic, good, tasks if tasks_ok else [])
        tune = sections.get("tune")
        if tune is not None and not self.errors:  # its values are tried on the clean spec
            from torchrec_ple.spec.tune_check import check_tune

            check_tune(self, tune, tasks)
        if self.errors:
            return None
        return Spec(
            data=data,
            features=features,
            tasks=tasks,
            model=model,
            train=train,
            tune=tune,
            raw=copy.deepcopy(self.raw),
        )

    def section(self, check: Any, value: Any) -> bool:
        """Check a section if it converted (lists: their converted items).

        True when the section converted entirely and its checks added no error.
        """
        if value is _BAD:
            return False
        before = len(self.errors)
        check(value)
        return len(self.errors) == before and not _is_bad(value)

    # -- data

    # -- features

    # -- tasks

    # -- model and train


# --------------------------------------------------------------------------- API


def _collect(
    text: str, path: Optional[Union[str, Path]], overrides: Sequence[OverrideArg]
) -> Tuple[Optional[Spec], List[SpecError]]:
    file = str(path) if path is not None else None
    try:
        raw, lines = _read_yaml(text, file)
    except SpecError as e:
        return None, [e]
    errors: List[SpecError] = []
    overridden: Set[KeyPath] = set()
    for o in overrides:
        try:
            key, value = o if isinstance(o, tuple) else parse_override(o)
            if isinstance(raw, dict):
                _apply_override(raw, key, value, overridden)
        except SpecError as e:  # name where the problem came from
            hint = e.hint or "in --set"
            errors.append(
                SpecError(e.key, e.expected, e.found, did_you_mean=e.did_you_mean, hint=hint)
            )
    base = Path(os.path.abspath(path)).parent if path is not None else Path.cwd()
    if not errors:
        try:
            raw = _with_feast_tags(raw, base)
        except SpecError as e:
            return None, [SpecError(e.key, e.expected, e.found, file=file, hint=e.hint)]
    checker = _Checker(raw, lines, overridden, file, base)
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
    spec, errors = _collect(text, path, overrides)
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
    return _collect(text, Path(path), overrides)[1]


def plain(obj: Any) -> Any:
    """A spec mapping (``Spec.raw``) with paths as strings, ready for ``yaml.safe_dump``."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _with_feast_tags(raw: Any, base: Path) -> Any:
    """For ``data.source: feast``: fill embedding settings from the Feast field tags.

    Runs before validation because tags may supply the table dims. Feast is imported only
    here, and only for feast specs.
    """
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or data.get("source") != "feast":
        return raw
    fe = data.get("feast")
    if not isinstance(fe, dict) or not isinstance(fe.get("repo_path"), str):
        return raw  # the checker reports the missing/invalid section
    refs = fe.get("feature_service") or fe.get("features")
    if not refs:
        return raw
    repo = Path(os.path.expanduser(fe["repo_path"]))
    repo = repo if repo.is_absolute() else base / repo
    try:
        from torchrec_ple.spec.feast_tags import feature_tags, merge_feature_tags, open_store

        store = open_store(repo)
        tags = feature_tags(store, refs, bool(fe.get("full_feature_names", False)))
    except ImportError:
        raise SpecError(
            "data.source",
            "the feast extra installed (pip install -r requirements/feast.txt)",
            "feast",
        ) from None
    except Exception as e:  # Feast raises many types; the user needs the message, in one line
        raise SpecError(
            "data.feast",
            "a readable Feast repo and existing features",
            str(e).splitlines()[0][:200],
        ) from None
    return merge_feature_tags(raw, tags)
