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
import difflib
import functools
import math
import os
import re
from pathlib import Path
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.schema import (
    ACTIVATIONS,
    ARCHITECTURES,
    COMPUTE_KERNELS,
    CPU_EMBEDDING_OPTIMIZERS,
    DATA_SOURCES,
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    FEAST_SPLITS,
    FEATURE_TYPES,
    FILE_FORMATS,
    LOSS_WEIGHTINGS,
    LR_DECAYS,
    NONFINITE_LOSS_ACTIONS,
    NORMALIZERS,
    ON_EMPTY,
    ON_INVALID_LABEL,
    ON_MISSING,
    ON_OUT_OF_RANGE,
    POOLINGS,
    PRECISIONS,
    PROGRESS_MODES,
    SELECT_METRICS,
    SHARDING_TYPES,
    TASK_TYPES,
    WEIGHT_UNITS,
    DataSpec,
    FeatureSpec,
    FileSpec,
    ModelSpec,
    Spec,
    SyntheticSpec,
    TaskSpec,
    TrainSpec,
    VocabSpec,
)

__all__ = ["load_spec", "parse_spec", "parse_override", "validate_all", "synthetic_columns"]

KeyPath = Tuple[Union[str, int], ...]
OverrideArg = Union[str, Tuple[str, Any]]

_BAD = object()  # a value that failed conversion; its error is already recorded
_SHORTHANDS: Dict[type, str] = {FileSpec: "path"}  # `train: x.parquet` means `{path: ...}`
_LOADER_FIELDS: Dict[type, Tuple[str, ...]] = {Spec: ("path", "raw")}  # not YAML keys
# libyaml when available: the same safe constructors, a faster parser.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES = 200_000  # guards against alias bombs ("billion laughs")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # `1e-3`: text in YAML 1.1
_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".tsv", ".data", ".test", ".txt")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
_CSV_ONLY_KEYS = ("names", "separator", "na_values", "comment", "skip_rows")
# Column kinds (see synthetic_columns) a feature type can read from the synthetic source.
_SYNTHETIC_FEATURE_KINDS = {
    "sequence": ("list",),
    "categorical": ("id", "label_binary"),
    "numeric": ("numeric", "label_binary", "label_regression"),
}
_SYNTHETIC_FIXED = {
    "user_id": "id",
    "item_id": "id",
    "history": "list",
    "y1": "label_regression",
    "y2": "label_regression",
    "click": "label_binary",
    "buy": "label_binary",
}


def synthetic_columns(s: SyntheticSpec) -> Dict[str, str]:
    """Columns the synthetic source produces: name -> kind.

    Kinds: ``numeric`` (``x0..x{dim-1}``), ``id`` (``user_id``, ``item_id``), ``list``
    (``history``: item ids), ``label_regression`` (``y1``, ``y2``: the paper's two tasks),
    ``label_binary`` (``click``; ``buy``, null unless ``click == 1``).
    """
    cols = {f"x{i}": "numeric" for i in range(s.dim)}
    cols.update(_SYNTHETIC_FIXED)
    return cols


def _synthetic_kind(column: str, s: SyntheticSpec) -> Optional[str]:
    # Like synthetic_columns(s).get(column), without materialising dim names.
    m = re.fullmatch(r"x(0|[1-9]\d*)", column)
    if m:
        return "numeric" if int(m.group(1)) < s.dim else None
    return _SYNTHETIC_FIXED.get(column)


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


class _Checker:
    """Converts plain data into a :class:`Spec` and validates it, collecting errors."""

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

    # -- reporting

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

    # -- generic conversion

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

    def check_data(self, d: DataSpec) -> None:
        P: KeyPath = ("data",)
        self.choice(P + ("source",), d.source, DATA_SOURCES)
        if d.source == "files" and d.train is None:
            self.err(P + ("train",), "a training file for the 'files' source", "nothing")
        if d.source == "feast":
            if d.feast is None:
                self.err(P + ("feast",), "a feast section for the 'feast' source", "nothing")
            else:
                F = P + ("feast",)
                if (d.feast.feature_service is None) == (d.feast.features is None):
                    self.err(
                        F,
                        "exactly one of feature_service, features",
                        "both" if d.feast.features else "neither",
                    )
                self.choice(F + ("split",), d.feast.split, FEAST_SPLITS)
        for name in ("train", "validation"):
            fs = getattr(d, name)
            if fs is not None:
                self.check_file(fs, P + (name,))
        v = d.validation_fraction
        self.within(P + ("validation_fraction",), 0 <= v < 1, "a number in [0, 1)", v)
        self.at_least(P + ("shuffle_buffer",), d.shuffle_buffer)
        self.at_least(P + ("num_workers",), d.num_workers, 0)
        m = d.max_dropped_fraction
        self.within(P + ("max_dropped_fraction",), 0 <= m <= 1, "a number in [0, 1]", m)
        if d.streaming and d.source != "files":
            self.err(P + ("streaming",), "streaming only with the 'files' source", "true")
        if d.streaming and d.validation is None and self.given(P + ("validation_fraction",)):
            hint = "streaming cannot hold rows out: give data.validation"
            self.err(
                P + ("validation_fraction",), "no validation_fraction", format_value(v), hint=hint
            )
        s, S = d.synthetic, P + ("synthetic",)
        for k in ("train_rows", "validation_rows", "dim", "num_sines", "num_users", "num_items"):
            self.at_least(S + (k,), getattr(s, k))
        self.at_least(S + ("history_len",), s.history_len)
        self.at_least(S + ("seed",), s.seed, 0)
        c = s.correlation
        self.within(S + ("correlation",), -1 <= c <= 1, "a number in [-1, 1]", c)
        self.within(S + ("noise",), s.noise >= 0, "a number >= 0", s.noise)

    def check_file(self, fs: FileSpec, P: KeyPath) -> None:
        if fs.format is not None:
            self.choice(P + ("format",), fs.format, FILE_FORMATS)
        else:
            fmt = _infer_format(fs.path)
            if fmt is None:
                suffixes = ", ".join(_PARQUET_SUFFIXES + _CSV_SUFFIXES)
                expected = f"a path ending in {suffixes} or a directory (else set format)"
                self.err(P + ("path",), expected, format_value(str(fs.path)))
                return
            fs.format = fmt
            # A .tsv file is tab-separated unless the spec says otherwise.
            if _plain_suffix(fs.path) == ".tsv" and not self.given(P + ("separator",)):
                fs.separator = "\t"
        if fs.format == "parquet":
            for k in _CSV_ONLY_KEYS:
                if self.given(P + (k,)):
                    self.err(
                        P + (k,),
                        f"no {k} for a parquet file (a CSV option)",
                        format_value(getattr(fs, k)),
                    )
        if fs.names is not None:
            self.unique_names(P + ("names",), fs.names, "column name")
        if not fs.separator:
            self.err(P + ("separator",), "a non-empty separator", "''")
        if fs.comment is not None and len(fs.comment) != 1:
            self.err(P + ("comment",), "a single character", format_value(fs.comment))
        self.at_least(P + ("skip_rows",), fs.skip_rows, 0)

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

    # -- features

    def check_features(self, features: List[Any]) -> None:
        if not features:
            self.err(("features",), "at least one feature", "list []")
            return
        good = [(i, f) for i, f in enumerate(features) if f is not _BAD]
        before = len(self.errors)
        for i, f in good:
            self.check_feature(f, ("features", i))
        if len(good) < len(features) or len(self.errors) > before:
            return  # cross-feature checks would only repeat the same problems
        seen: Dict[str, int] = {}
        for i, f in good:
            if f.name in seen:
                hint = f"already the name of features[{seen[f.name]}]"
                self.err(
                    ("features", i, "name"),
                    "a unique feature name",
                    format_value(f.name),
                    hint=hint,
                )
            seen.setdefault(f.name, i)
        self.check_tables(features)

    def check_feature(self, f: FeatureSpec, P: KeyPath) -> None:
        if not f.name:
            self.err(P + ("name",), "a non-empty name", "''")
        if not self.given(P + ("column",)):
            f.column = f.name
        elif not f.column:
            self.err(P + ("column",), "a non-empty column name", "''")
        self.choice(P + ("normalize",), f.normalize, NORMALIZERS)
        e, E = f.embedding, P + ("embedding",)
        if e.pooling is not None:
            self.choice(E + ("pooling",), e.pooling, POOLINGS)
        self.choice(E + ("sharding",), e.sharding, SHARDING_TYPES)
        self.choice(E + ("compute_kernel",), e.compute_kernel, COMPUTE_KERNELS)
        if e.cache_load_factor is not None:
            lf = e.cache_load_factor
            self.within(E + ("cache_load_factor",), 0 < lf <= 1, "a number in (0, 1]", lf)
        self.at_least(E + ("dim",), e.dim)
        if e.table is not None and not e.table:
            self.err(E + ("table",), "a non-empty table name", "''")
        if not self.choice(P + ("type",), f.type, FEATURE_TYPES):
            return
        self.check_policies(f, P)
        if f.type == "numeric":
            self.check_numeric(f, P)
            return
        mappings = [
            k for k in ("vocab", "hash_buckets", "num_embeddings") if getattr(f, k) is not None
        ]
        if len(mappings) > 1:
            found = f"{mappings[0]} and {mappings[1]}"
            self.err(
                P + (mappings[1],), "exactly one of vocab, hash_buckets, num_embeddings", found
            )
        elif not mappings:
            f.vocab = VocabSpec()  # the default id mapping: a vocabulary fitted on train
        self.at_least(P + ("hash_buckets",), f.hash_buckets)
        self.at_least(P + ("num_embeddings",), f.num_embeddings)
        if f.vocab is not None:
            self.at_least(P + ("vocab", "min_count"), f.vocab.min_count)
            self.at_least(P + ("vocab", "max_size"), f.vocab.max_size)
        for k in ("buckets", "fill", "clip"):
            if getattr(f, k) is not None and not (k == "fill" and f.num_embeddings is not None):
                self.err(
                    P + (k,),
                    f"no {k} on a {f.type} feature (numeric only"
                    + (", or an id with num_embeddings)" if k == "fill" else ")"),
                    format_value(self.raw_at(P + (k,))),
                )
        if f.type == "categorical":
            for k in ("max_len", "separator"):
                if getattr(f, k) is not None:
                    self.err(
                        P + (k,),
                        f"no {k} on a categorical feature (sequence only)",
                        format_value(getattr(f, k)),
                    )
        else:
            self.at_least(P + ("max_len",), f.max_len)
            if f.separator is not None and not f.separator:
                self.err(P + ("separator",), "a non-empty separator", "''")

    def check_policies(self, f: FeatureSpec, P: KeyPath) -> None:
        """The data policies a feature of this kind takes; fills in the defaults."""
        kind = f.kind
        what = {"numeric": "a numeric", "sparse": "a vocabulary, hashed or bucketized"}
        choices = ON_MISSING[kind]
        if f.on_missing is None:
            f.on_missing = choices[0]
        elif self.choice(P + ("on_missing",), f.on_missing, choices):
            if f.on_missing == "fill" and kind == "identity" and f.fill is None:
                self.err(
                    P + ("on_missing",),
                    "a 'fill: <id>' beside on_missing: fill (the id missing values take)",
                    "no fill",
                )
        if kind == "identity":
            if f.on_out_of_range is None:
                f.on_out_of_range = ON_OUT_OF_RANGE[0]
            elif self.choice(P + ("on_out_of_range",), f.on_out_of_range, ON_OUT_OF_RANGE):
                if f.on_out_of_range == "fill" and f.fill is None:
                    self.err(
                        P + ("on_out_of_range",),
                        "a 'fill: <id>' beside on_out_of_range: fill (the id out-of-range "
                        "values take)",
                        "no fill",
                    )
            n, fill = f.num_embeddings, f.fill
            if n is not None and fill is not None and not (0 <= fill < n and fill == int(fill)):
                self.err(P + ("fill",), f"an integer id in [0, {n})", format_value(fill))
        elif f.on_out_of_range is not None:
            self.err(
                P + ("on_out_of_range",),
                "no on_out_of_range without num_embeddings (identity-mapped ids only; "
                f"{what[kind]} feature has no range)",
                format_value(f.on_out_of_range),
            )
        if f.type == "sequence":
            if f.on_empty is None:
                f.on_empty = ON_EMPTY[0]
            elif self.choice(P + ("on_empty",), f.on_empty, ON_EMPTY):
                if f.on_empty == "oov" and kind == "identity":
                    self.err(
                        P + ("on_empty",),
                        "keep, drop or error on an identity-mapped sequence (it has no "
                        "out-of-vocabulary row)",
                        "oov",
                    )
        elif f.on_empty is not None:
            self.err(
                P + ("on_empty",),
                "no on_empty on a non-sequence feature (sequence only)",
                format_value(f.on_empty),
            )
        c = f.clip
        if c is not None and f.type == "numeric":
            if c.min is None and c.max is None:
                self.err(P + ("clip",), "min, max or both", "neither")
            elif c.min is not None and c.max is not None and not c.min < c.max:
                self.err(P + ("clip",), "min < max", f"min {c.min:g}, max {c.max:g}")
            if f.buckets is not None:
                self.err(
                    P + ("clip",),
                    "no clip on a bucketized feature (its end buckets already hold the tails)",
                    format_value(self.raw_at(P + ("clip",))),
                )

    def check_numeric(self, f: FeatureSpec, P: KeyPath) -> None:
        for k in ("vocab", "hash_buckets", "num_embeddings", "max_len", "separator"):
            if getattr(f, k) is not None:
                expected = f"no {k} on a numeric feature (categorical/sequence only)"
                self.err(P + (k,), expected, format_value(self.raw_at(P + (k,))))
        b, B = f.buckets, P + ("buckets",)
        if b is None:
            for k in ("dim", "table", "pooling"):
                v = getattr(f.embedding, k)
                if v is not None:
                    expected = f"no embedding.{k} on a numeric feature without buckets"
                    self.err(P + ("embedding", k), expected, format_value(v))
            return
        if (b.boundaries is None) == (b.num_buckets is None):
            found = "neither" if b.boundaries is None else "both"
            self.err(B, "exactly one of boundaries, num_buckets", found)
        elif b.boundaries is not None:
            if not b.boundaries or any(x >= y for x, y in zip(b.boundaries, b.boundaries[1:])):
                self.err(
                    B + ("boundaries",),
                    "a non-empty, strictly increasing list",
                    format_value(b.boundaries),
                )
        else:
            self.at_least(B + ("num_buckets",), b.num_buckets, 2)

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

    def check_tables(self, features: List[FeatureSpec]) -> None:
        """Features sharing a table agree on dim, pooling, sharding and id mapping.

        Pooling and sharding are per table in TorchRec (``EmbeddingBagConfig``). After the
        checks every sparse feature holds its table's resolved values.
        """
        tables: Dict[str, List[int]] = {}
        for i, f in enumerate(features):
            if f.is_sparse:
                tables.setdefault(f.embedding.table or f.name, []).append(i)
        for table, idx in tables.items():
            if "." in table:
                # the table becomes a torch module name, where a dot is a path separator
                named = any(features[i].embedding.table for i in idx)
                i = next((i for i in idx if features[i].embedding.table), idx[0])
                path = ("features", i) + (("embedding", "table") if named else ("name",))
                what = (
                    "table name"
                    if named
                    else "name (the table of a sparse feature without embedding.table)"
                )
                self.err(
                    path,
                    f"a {what} without '.'",
                    format_value(table),
                    hint="set embedding.table to a name without dots" if not named else None,
                )
                continue
            dim = self.agree(features, idx, table, "dim", None)
            if dim is None:
                path = ("features", idx[0], "embedding", "dim")
                self.err(
                    path, f"an embedding dim for table '{table}' on one of its features", "none"
                )
            pooling = self.agree(features, idx, table, "pooling", None) or "sum"
            sharding = self.agree(features, idx, table, "sharding", "auto")
            kernel = self.agree(features, idx, table, "compute_kernel", "auto")
            load_factor = self.agree(features, idx, table, "cache_load_factor", None)
            self.check_kernel(features, idx, table, sharding, kernel, load_factor)
            first = features[idx[0]]
            for i in idx[1:]:
                mine, theirs = _id_mapping(features[i]), _id_mapping(first)
                if mine != theirs:
                    expected = f"the id mapping of feature '{first.name}' ({theirs[1]}) sharing table '{table}'"
                    self.err(("features", i, mine[0]), expected, mine[1])
            for i in idx:
                e = features[i].embedding
                e.table, e.dim, e.pooling, e.sharding = table, dim, pooling, sharding
                e.compute_kernel, e.cache_load_factor = kernel, load_factor

    def check_kernel(
        self,
        features: List[FeatureSpec],
        idx: List[int],
        table: str,
        sharding: str,
        kernel: str,
        load_factor: Optional[float],
    ) -> None:
        """A table's ``compute_kernel`` fits its sharding, and a ``cache_load_factor``
        its kernel."""
        if kernel != "auto" and sharding == "data_parallel":
            i = next(i for i in idx if features[i].embedding.compute_kernel != "auto")
            self.err(
                ("features", i, "embedding", "compute_kernel"),
                f"auto for table '{table}' (data_parallel tables use the dense kernel)",
                format_value(kernel),
            )
        if load_factor is not None and kernel not in ("auto", "fused_uvm_caching"):
            i = next(i for i in idx if features[i].embedding.cache_load_factor is not None)
            self.err(
                ("features", i, "embedding", "cache_load_factor"),
                f"no cache_load_factor for table '{table}' (compute_kernel {kernel} has no "
                "cache; fused_uvm_caching or auto)",
                format_value(load_factor),
            )

    def agree(
        self, features: List[FeatureSpec], idx: List[int], table: str, key: str, unset: Any
    ) -> Any:
        """The value of ``embedding.<key>`` declared in a table; an error on conflicts."""
        first: Optional[int] = None
        for i in idx:
            v = getattr(features[i].embedding, key)
            if v == unset:
                continue
            if first is None:
                first = i
            elif v != getattr(features[first].embedding, key):
                declared = getattr(features[first].embedding, key)
                expected = f"{key} {declared} like feature '{features[first].name}' sharing table '{table}'"
                self.err(("features", i, "embedding", key), expected, format_value(v))
        return unset if first is None else getattr(features[first].embedding, key)

    # -- tasks

    def check_tasks(self, tasks: List[Any]) -> None:
        if not tasks:
            self.err(("tasks",), "at least one task", "list []")
            return
        good = [(i, t) for i, t in enumerate(tasks) if t is not _BAD]
        for i, t in good:
            self.check_task(t, ("tasks", i))
        seen: Dict[str, int] = {}
        for i, t in good:
            if t.name in seen:
                hint = f"already the name of tasks[{seen[t.name]}]"
                self.err(
                    ("tasks", i, "name"), "a unique task name", format_value(t.name), hint=hint
                )
            seen.setdefault(t.name, i)
        by_name = {t.name: t for _, t in good}
        for i, t in good:
            if t.esmm is None:
                continue
            P = ("tasks", i, "esmm")
            parent = by_name.get(t.esmm)
            if parent is None or parent is t:
                close = difflib.get_close_matches(
                    str(t.esmm), [n for n in by_name if n != t.name], n=1
                )
                self.err(
                    P,
                    "the name of another (binary CTR) task",
                    format_value(t.esmm),
                    did_you_mean=close[0] if close else None,
                )
            elif t.type != "binary" or parent.type != "binary":
                self.err(P, "ESMM between two binary tasks", f"{t.type} task on {parent.type} task")
            elif parent.esmm is not None:
                self.err(P, "a task that is not itself trained through ESMM", format_value(t.esmm))

    def check_task(self, t: TaskSpec, P: KeyPath) -> None:
        if not t.name:
            self.err(P + ("name",), "a non-empty name", "''")
        if not t.label:
            self.err(P + ("label",), "a non-empty label column", "''")
        self.choice(P + ("type",), t.type, TASK_TYPES)
        if t.positive is not None:
            if t.type != "binary":
                self.err(
                    P + ("positive",),
                    "no positive on a regression task (binary only)",
                    format_value(t.positive),
                )
            elif not t.positive or not all(_is_scalar(v) for v in t.positive):
                self.err(
                    P + ("positive",), "a non-empty list of plain values", format_value(t.positive)
                )
        ss, S = t.sample_space, P + ("sample_space",)
        if ss is not None:
            if not ss.column:
                self.err(S + ("column",), "a non-empty column name", "''")
            conds = [
                k
                for k, on in (
                    ("equals", ss.equals is not None),
                    ("in", ss.in_ is not None),
                    ("not_null", ss.not_null),
                )
                if on
            ]
            if len(conds) != 1:
                self.err(
                    S, "exactly one of equals, in, not_null: true", " and ".join(conds) or "none"
                )
            elif ss.equals is not None and not _is_scalar(ss.equals):
                self.err(
                    S + ("equals",), "a plain value (str, number or bool)", format_value(ss.equals)
                )
            elif ss.in_ is not None and (not ss.in_ or not all(_is_scalar(v) for v in ss.in_)):
                self.err(S + ("in",), "a non-empty list of plain values", format_value(ss.in_))
        if self.choice(P + ("on_invalid",), t.on_invalid, ON_INVALID_LABEL):
            if t.on_invalid != "error" and (t.type != "binary" or t.positive is not None):
                self.err(
                    P + ("on_invalid",),
                    "no on_invalid on a regression task or with positive (binary 0/1 labels only)",
                    format_value(t.on_invalid),
                )
        w, W = t.weight, P + ("weight",)
        self.within(W + ("decay",), 0 < w.decay <= 1, "a number in (0, 1]", w.decay)
        self.within(W + ("initial",), w.initial >= 0, "a number >= 0", w.initial)

    def column_path(self, i: int) -> KeyPath:
        """Where a feature's column is spelled: ``column``, or ``name`` when defaulted."""
        path: KeyPath = ("features", i, "column")
        return path if self.given(path) else ("features", i, "name")

    def check_leaks(self, features: List[FeatureSpec], tasks: List[TaskSpec]) -> None:
        labels = {}
        for t in tasks:
            labels.setdefault(t.label, t.name)
        for i, f in enumerate(features):
            if f.column in labels:
                hint = f"label of task '{labels[f.column]}' leaks into inputs"
                self.err(
                    self.column_path(i),
                    "a column that is not a task label",
                    format_value(f.column),
                    hint=hint,
                )

    def check_synthetic(
        self, s: SyntheticSpec, features: List[Tuple[int, FeatureSpec]], tasks: List[TaskSpec]
    ) -> None:
        names = [f"x0..x{s.dim - 1}", *_SYNTHETIC_FIXED]
        candidates = ["x0", f"x{s.dim - 1}", *_SYNTHETIC_FIXED]
        expected = f"a column produced by the synthetic source ({', '.join(names)})"

        def known(path: KeyPath, column: str) -> Optional[str]:
            kind = _synthetic_kind(column, s)
            if kind is None:
                self.err(
                    path, expected, format_value(column), did_you_mean=_close(column, candidates)
                )
            return kind

        for i, f in features:
            kind = known(self.column_path(i), f.column)
            allowed = _SYNTHETIC_FEATURE_KINDS.get(f.type, ())
            if kind is not None and kind not in allowed:
                self.err(
                    self.column_path(i),
                    f"a column of kind {' or '.join(allowed)} for a {f.type} feature",
                    f"{f.column!r} ({kind})",
                )
        for i, t in enumerate(tasks):
            known(("tasks", i, "label"), t.label)
            if t.sample_space is not None:
                known(("tasks", i, "sample_space", "column"), t.sample_space.column)

    # -- model and train

    def check_model(self, m: ModelSpec) -> None:
        M: KeyPath = ("model",)
        self.choice(M + ("architecture",), m.architecture, ARCHITECTURES)
        self.choice(M + ("activation",), m.activation, ACTIVATIONS)
        self.at_least(M + ("levels",), m.levels)
        self.at_least(M + ("shared_experts",), m.shared_experts, 0)
        self.at_least(M + ("task_experts",), m.task_experts, 0)
        if not m.expert_dims:
            self.err(M + ("expert_dims",), "a non-empty list of int", "list []")
        for key in ("expert_dims", "tower_dims"):
            for j, d in enumerate(getattr(m, key)):
                self.at_least(M + (key, j), d)
        self.within(M + ("dropout",), 0 <= m.dropout < 1, "a number in [0, 1)", m.dropout)
        s, t, a = m.shared_experts, m.task_experts, m.architecture
        if s < 0 or t < 0:
            return
        gate = None  # (key, expected, found, hint) of an expert-count problem
        if a in ("mmoe", "ml_mmoe") and s < 1:
            gate = ("shared_experts", "shared_experts >= 1", str(s), "MMoE experts are all shared")
        elif a in ("ple", "cgc") and s + t < 1:
            expected = "task_experts + shared_experts >= 1"
            gate = ("task_experts", expected, f"{t} + {s}", "a task gate with no expert")
        elif a == "ple" and m.levels > 1 and s < 1:
            hint = "the shared gate of a lower level would be a gate with no expert"
            gate = ("shared_experts", "shared_experts >= 1 for ple with levels > 1", str(s), hint)
        elif s + t < 1:
            expected = "shared_experts + task_experts >= 1"
            gate = ("shared_experts", expected, f"{s} + {t}", "no expert at all")
        if gate is not None:
            self.err(M + (gate[0],), gate[1], gate[2], hint=gate[3])

    def check_train(self, t: TrainSpec) -> None:
        T: KeyPath = ("train",)
        self.at_least(T + ("batch_size",), t.batch_size)
        self.at_least(T + ("eval_batch_size",), t.eval_batch_size)
        if t.eval_batch_size is None:
            t.eval_batch_size = 4 * t.batch_size
        self.at_least(T + ("epochs",), t.epochs)
        self.at_least(T + ("seed",), t.seed, 0)
        self.at_least(T + ("num_threads",), t.num_threads)
        self.at_least(T + ("max_steps",), t.max_steps)
        self.at_least(T + ("checkpoint_every",), t.checkpoint_every)
        self.at_least(T + ("keep_checkpoints",), t.keep_checkpoints)
        self.at_least(T + ("log_every",), t.log_every)
        self.choice(T + ("weight_schedule_unit",), t.weight_schedule_unit, WEIGHT_UNITS)
        self.choice(T + ("loss_weighting",), t.loss_weighting, LOSS_WEIGHTINGS)
        if t.on_nonfinite_loss is False:  # YAML 1.1 reads a bare `off` as false
            t.on_nonfinite_loss = "off"
        self.choice(T + ("on_nonfinite_loss",), t.on_nonfinite_loss, NONFINITE_LOSS_ACTIONS)
        self.choice(T + ("precision",), t.precision, PRECISIONS)
        d = t.dist_timeout_s
        self.within(T + ("dist_timeout_s",), d > 0, "a number of seconds > 0", d)
        for key in ("hbm_cap_gb", "ddr_cap_gb"):
            cap = getattr(t.planner, key)
            if cap is not None:
                self.within(T + ("planner", key), cap > 0, "a number of GiB > 0", cap)
        self.at_least(T + ("max_skipped_steps",), t.max_skipped_steps, 0)
        self.check_schedules(t)
        for key, choices in (
            ("dense_optimizer", DENSE_OPTIMIZERS),
            ("embedding_optimizer", EMBEDDING_OPTIMIZERS),
        ):
            o, op = getattr(t, key), T + (key,)
            self.choice(op + ("type",), o.type, choices)
            self.within(op + ("lr",), o.lr > 0, "a number > 0", o.lr)
            self.within(
                op + ("weight_decay",), o.weight_decay >= 0, "a number >= 0", o.weight_decay
            )
            self.within(op + ("eps",), o.eps > 0, "a number > 0", o.eps)
        opt = t.embedding_optimizer.type
        if opt in ("adagrad", "sgd") and t.embedding_optimizer.weight_decay:
            self.err(
                T + ("embedding_optimizer", "weight_decay"),
                f"0 with embedding_optimizer {opt} (fbgemm's {opt} kernel has no weight decay)",
                format_value(t.embedding_optimizer.weight_decay),
                hint="rowwise_adagrad applies it as an L2 penalty, adam decoupled",
            )
        if (
            opt in EMBEDDING_OPTIMIZERS
            and opt not in CPU_EMBEDDING_OPTIMIZERS
            and not _cuda_available()
        ):
            cpu = ", ".join(CPU_EMBEDDING_OPTIMIZERS)
            self.err(
                T + ("embedding_optimizer", "type"),
                f"one of {cpu} without CUDA (a GPU and the CUDA build of fbgemm-gpu)",
                format_value(opt),
                hint=f"fbgemm's CPU kernels support {cpu}",
            )

    def check_schedules(self, t: TrainSpec) -> None:
        """``progress``, ``early_stopping``, ``lr_schedule`` and ``clip_grad_norm``."""
        T: KeyPath = ("train",)
        if t.progress not in PROGRESS_MODES or not isinstance(t.progress, (bool, str)):
            self.err(T + ("progress",), "true, false or auto", format_value(t.progress))
        if t.clip_grad_norm is not None:
            c = t.clip_grad_norm
            self.within(T + ("clip_grad_norm",), c > 0, "a number > 0", c)
        e, E = t.early_stopping, T + ("early_stopping",)
        if e is not None:
            self.at_least(E + ("patience",), e.patience)
            self.within(E + ("min_delta",), e.min_delta >= 0, "a number >= 0", e.min_delta)
            if t.select is None:
                self.err(
                    E,
                    "train.select beside it (the score early stopping watches)",
                    "no train.select",
                    hint="e.g. select: {metric: {ctr: auc}}",
                )
        s, S = t.lr_schedule, T + ("lr_schedule",)
        if s is not None:
            self.at_least(S + ("warmup_steps",), s.warmup_steps, 0)
            self.choice(S + ("decay",), s.decay, LR_DECAYS)
            r = s.min_lr_ratio
            self.within(S + ("min_lr_ratio",), 0 <= r <= 1, "a number in [0, 1]", r)
            self.within(S + ("gamma",), 0 < s.gamma <= 1, "a number in (0, 1]", s.gamma)
            self.at_least(S + ("step_size",), s.step_size)
            if s.decay == "step" and s.step_size is None:
                self.err(S + ("step_size",), "int >= 1 (required by decay: step)", "nothing")

    def check_select(self, t: TrainSpec, tasks: List[TaskSpec], data: Any) -> None:
        """``train.select`` names tasks of the spec, metrics of their type, and needs
        validation data."""
        sel = t.select
        if sel is None:
            return
        S: KeyPath = ("train", "select")
        types = {task.name: task.type for task in tasks}
        esmm = {task.name for task in tasks if task.esmm}
        for key in ("metric", "weights"):
            for name in getattr(sel, key):
                if name not in types:
                    self.err(
                        S + (key, name),
                        "a task name (one of " + ", ".join(types) + ")",
                        format_value(name),
                        did_you_mean=_close(name, types),
                    )
        for name, metric in sel.metric.items():
            if name not in types:
                continue
            allowed = [m for m in SELECT_METRICS[types[name]] if m != "ctcvr_auc" or name in esmm]
            if metric not in allowed:
                self.err(
                    S + ("metric", name),
                    f"one of {', '.join(allowed)} (a {types[name]} task)",
                    format_value(metric),
                    did_you_mean=_close(metric, allowed),
                )
        for name, w in sel.weights.items():
            self.within(S + ("weights", name), w >= 0, "a number >= 0", w)
        if not sel.metric and not sel.weights:
            self.err(
                S,
                "metric (task -> metric) or weights (task -> weight)",
                "neither",
                hint="e.g. select: {metric: {ctr: auc}}",
            )
        elif sel.weights and not any(w > 0 for w in sel.weights.values()):
            self.err(S + ("weights",), "a weight > 0", format_value(sel.weights))
        if isinstance(data, DataSpec) and data.validation is None:
            none = data.streaming or (data.source == "files" and data.validation_fraction == 0)
            if none:
                self.err(
                    S,
                    "validation data to select on (data.validation, or a "
                    "data.validation_fraction > 0)",
                    "none",
                )


def _plain_suffix(p: Path) -> str:
    """The suffix that names the format, skipping a compression suffix (``x.csv.gz``)."""
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _infer_format(p: Path) -> Optional[str]:
    suffix = _plain_suffix(p)
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _CSV_SUFFIXES:
        return "csv"
    # A directory (existing, or a suffix-less path to be written) holds Parquet parts.
    if os.path.isdir(p) or (not p.suffix and not os.path.exists(p)):
        return "parquet"
    return None


def _id_mapping(f: FeatureSpec) -> Tuple[str, str]:
    """(key, description) of how a sparse feature maps raw values to rows."""
    if f.buckets is not None:
        b = f.buckets
        return (
            "buckets",
            f"boundaries {b.boundaries}" if b.boundaries else f"num_buckets {b.num_buckets}",
        )
    if f.hash_buckets is not None:
        return "hash_buckets", f"hash_buckets {f.hash_buckets}"
    if f.num_embeddings is not None:
        return "num_embeddings", f"num_embeddings {f.num_embeddings}"
    v = f.vocab or VocabSpec()
    return "vocab", f"vocab min_count {v.min_count}, max_size {v.max_size}"


def _cuda_available() -> bool:
    # imported lazily (torch, fbgemm): only the CUDA-only optimizers' check needs it
    from torchrec_ple.train.device import cuda_kernels_available

    return cuda_kernels_available()


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
