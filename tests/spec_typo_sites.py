"""The mutation sites of the example specs and the mutations tests/test_spec_typos.py
makes at them: the schema's types and choices, realistic typos, the examples walked node by
node, writing a mutated example and loading it."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import json
import re
from pathlib import Path
from typing import (
    Any,
    ContextManager,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Tuple,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)
from unittest import mock

import pytest
import yaml

from torchrec_ple.registry import FEATURE_KINDS, HEADS, LOSS_WEIGHTINGS, READERS
from torchrec_ple.spec import Spec, SpecError, load_spec, loader, schema, validate_all
from torchrec_ple.spec.feast_tags import merge_feature_tags
from torchrec_ple.spec.schema import (
    ACTIVATIONS,
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    FEAST_SPLITS,
    FILE_FORMATS,
    NORMALIZERS,
    POOLINGS,
    SHARDING_TYPES,
    TASK_TYPES,
    WEIGHT_UNITS,
)

ROOT = Path(__file__).resolve().parents[1]
KeyPath = Tuple[Union[str, int], ...]

# Fields that take one of a fixed set of values (`[]`: any list index). A choice field
# missing here is still caught: its typos become `text` cases, which then demand the
# "did you mean" of a choice (see test_text_typo).
CHOICES: Dict[str, Tuple[str, ...]] = {
    "data.source": tuple(READERS.names()),
    "data.feast.split": FEAST_SPLITS,
    "data.train.format": FILE_FORMATS,
    "data.validation.format": FILE_FORMATS,
    "features[].type": tuple(FEATURE_KINDS.names()),
    "features[].normalize": NORMALIZERS,
    "features[].embedding.pooling": POOLINGS,
    "features[].embedding.sharding": SHARDING_TYPES,
    "tasks[].type": TASK_TYPES,
    "model.architecture": tuple(HEADS.names()),
    "model.activation": ACTIVATIONS,
    "train.weight_schedule_unit": WEIGHT_UNITS,
    "train.loss_weighting": tuple(LOSS_WEIGHTINGS.names()),
    "train.dense_optimizer.type": DENSE_OPTIMIZERS,
    "train.embedding_optimizer.type": EMBEDDING_OPTIMIZERS,
}
NOT_A_NUMBER = "12x"
NOT_A_SCALAR = "{oops: 1}"
KINDS = ("key", "choice", "number", "text", "other")


# --------------------------------------------------------------------------- schema


def _unoptional(tp: Any) -> Any:
    if get_origin(tp) is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _yaml_fields(cls: type) -> Dict[str, Any]:
    """YAML key -> type of a schema dataclass (``in_`` is spelled ``in``)."""
    hints = get_type_hints(cls)
    loader_only = ("path", "raw") if cls is Spec else ()  # set by the loader, not YAML keys
    return {
        f.name.removesuffix("_"): hints[f.name]
        for f in dataclasses.fields(cls)
        if f.name not in loader_only
    }


ALL_KEYS = {
    key
    for cls in vars(schema).values()
    if dataclasses.is_dataclass(cls)
    for key in _yaml_fields(cls)
}


def _type_at(path: KeyPath) -> Any:
    """The schema type of the value at a key path (Optional unwrapped)."""
    tp: Any = Spec
    for part in path:
        tp = _unoptional(tp)
        if isinstance(part, int):
            assert get_origin(tp) is list, path
            tp = get_args(tp)[0]
        elif dataclasses.is_dataclass(tp):
            tp = _yaml_fields(tp)[part]
        else:
            assert get_origin(tp) is dict, path
            tp = get_args(tp)[1]
    return _unoptional(tp)


def key_str(path: KeyPath) -> str:
    """``("tasks", 1, "weight")`` -> ``"tasks[1].weight"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out


def _pattern(path: KeyPath) -> str:
    """``("tasks", 1, "type")`` -> ``"tasks[].type"``."""
    return re.sub(r"\[\d+\]", "[]", key_str(path))


# --------------------------------------------------------------------------- typos


def _typos(word: str) -> Iterator[str]:
    """Realistic misspellings, most natural first: a swap, a dropped, a doubled letter."""
    n = len(word)
    for i in [*range(1, n - 1), 0] if n > 1 else []:
        if word[i] != word[i + 1]:
            yield word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if n > 3:  # `lr` -> `l` is no typo anyone makes
        for i in [*range(1, n), 0]:
            yield word[:i] + word[i + 1 :]
    for i in reversed(range(n)):
        yield word[:i] + word[i] + word[i:]


def _plain(text: str) -> bool:
    """Whether ``text`` reads back as itself, unquoted, in block and flow YAML."""
    try:
        return yaml.safe_load(f"k: {text}") == {"k": text} == yaml.safe_load(f"{{k: {text}}}")
    except yaml.YAMLError:
        return False


def typo(word: str, valid: Any, invalid: Any = ()) -> str:
    """A plain-YAML typo of ``word``, none of ``valid``/``invalid``, whose closest
    ``valid`` spelling (what a "did you mean" finds) is ``word``."""
    for t in _typos(word):
        if (
            t not in (word, *valid, *invalid)
            and _plain(t)
            and difflib.get_close_matches(t, list(valid), n=1) == [word]
        ):
            return t
    raise AssertionError(f"no recognisable typo of {word!r} among {sorted(valid)}")


def text_typo(word: str) -> str:
    """A typo of free text, written as YAML (quoted where plain YAML would misread it)."""
    t = next((t for t in _typos(word) if t != word), word + word)
    return t if _plain(t) else json.dumps(t)


# --------------------------------------------------------------------------- examples


def _is_spec(path: Path) -> bool:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and {"features", "tasks"} <= set(data)


EXAMPLES = sorted(ROOT.glob("feature_specs/*.yaml")) + sorted(
    p for p in ROOT.glob("examples/**/*.yaml") if _is_spec(p)
)
FEAST_EXAMPLE = ROOT / "examples" / "feast"


def _label(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return str(rel.relative_to(rel.parts[0]))


def _feast_tags(definitions: Path) -> Dict[str, Dict[str, str]]:
    """``{field: tags}`` of the ``Field(name=..., tags={...})`` calls of a Feast repo,
    read from its source (no feast import, no registry)."""
    tags: Dict[str, Dict[str, str]] = {}
    for node in ast.walk(ast.parse(definitions.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Field":
            kw = {k.arg: k.value for k in node.keywords}
            tags[ast.literal_eval(kw["name"])] = (
                ast.literal_eval(kw["tags"]) if "tags" in kw else {}
            )
    return tags


def _loading(spec: Path) -> ContextManager[Any]:
    """What loading ``spec`` for real involves.

    The Feast example takes its embedding settings from the Feast field tags, merged into
    the YAML mapping before validation (examples/feast/train.py; the loader does the same
    for ``data.source: feast``): here the loader's merge step gets the repo's tags. No
    example is feast-sourced, so nothing opens a Feast repo or imports feast.
    """
    if FEAST_EXAMPLE not in spec.parents:
        return contextlib.nullcontext()
    tags = _feast_tags(FEAST_EXAMPLE / "feature_repo" / "definitions.py")
    return mock.patch.object(
        loader, "with_feast_tags", lambda raw, base: merge_feature_tags(raw, tags)
    )


class Site(NamedTuple):
    """One mutable place of an example: a key, or a scalar value."""

    spec: Path
    path: KeyPath  # key path of the key (or value)
    start: int  # character span of the key (or value) in the text
    end: int
    line: int  # the line a problem there is reported on
    value: Any  # the key or the scalar value

    @property
    def id(self) -> str:
        return f"{_label(self.spec)}:{key_str(self.path)}"


def _sites(spec: Path) -> Tuple[List[Site], List[Site], Dict[KeyPath, int]]:
    """(keys, scalar values, line of every key path and list item) of a spec; each node
    once (an alias is its anchor)."""
    text = spec.read_text(encoding="utf-8")
    keys: List[Site] = []
    scalars: List[Site] = []
    lines: Dict[KeyPath, int] = {}
    seen: set = set()
    yaml_loader = yaml.SafeLoader(text)

    def scalar(node: yaml.ScalarNode, path: KeyPath, line: int) -> None:
        value = yaml_loader.construct_object(node)
        scalars.append(Site(spec, path, node.start_mark.index, node.end_mark.index, line, value))

    def walk(node: yaml.Node, path: KeyPath) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                if isinstance(item, yaml.ScalarNode):
                    scalar(item, path + (i,), item.start_mark.line + 1)
                else:
                    walk(item, path + (i,))
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                assert isinstance(k, yaml.ScalarNode) and k.tag.endswith(":str"), k
                p, line = path + (k.value,), k.start_mark.line + 1
                lines[p] = line
                keys.append(Site(spec, p, k.start_mark.index, k.end_mark.index, line, k.value))
                if isinstance(v, yaml.ScalarNode):
                    scalar(v, p, line)
                else:
                    walk(v, p)

    try:
        walk(yaml_loader.get_single_node(), ())
    finally:
        yaml_loader.dispose()
    return keys, scalars, lines


def _kind(site: Site) -> str:
    if _pattern(site.path) in CHOICES:
        return "choice"
    if _type_at(site.path) in (int, float):
        return "number"
    return "text" if isinstance(site.value, str) else "other"


SITES: Dict[str, List[Site]] = {kind: [] for kind in KINDS}
LINES: Dict[Path, Dict[KeyPath, int]] = {}
for _spec in EXAMPLES:
    _keys, _scalars, LINES[_spec] = _sites(_spec)
    SITES["key"] += _keys
    for _site in _scalars:
        SITES[_kind(_site)].append(_site)
        if _kind(_site) == "text":  # a string also gets a mapping in its place
            SITES["other"].append(_site)


def _replacement(kind: str, site: Site) -> str:
    """What a ``kind`` mutation writes in place of the site."""
    if kind == "key":
        return typo(site.value, _yaml_fields(_type_at(site.path[:-1])), ALL_KEYS)
    if kind == "choice":
        return typo(site.value, CHOICES[_pattern(site.path)])
    if kind == "text":
        return text_typo(site.value)
    return {"number": NOT_A_NUMBER, "other": NOT_A_SCALAR}[kind]


# Known library bugs: (example, key path pattern, kind) -> reason.
def _params(kind: str) -> List[Any]:
    out = []
    for s in SITES[kind]:
        out.append(pytest.param(s, id=s.id))
    return out


def _write(tmp_path: Path, site: Site, replacement: str) -> Path:
    """The example with ``replacement`` in place of the site, as ``tmp_path/<its name>``.

    Nothing checks that data files exist, so relative paths may point nowhere.
    """
    text = site.spec.read_text(encoding="utf-8")
    out = tmp_path / site.spec.name
    out.write_text(text[: site.start] + replacement + text[site.end :], encoding="utf-8")
    return out


def _load(site: Site, path: Path) -> Optional[str]:
    """The one-line message of the SpecError loading ``path`` raises; None if it loads."""
    with _loading(site.spec):
        try:
            load_spec(path)
        except SpecError as e:
            msg = str(e)
        else:
            msg = None
        # `validate` reports the same problem first.
        assert [str(e) for e in validate_all(path)][:1] == ([msg] if msg else [])
    assert msg is None or (len(msg.splitlines()) == 1 and "\n" not in msg), msg
    return msg


def _error(site: Site, path: Path) -> str:
    msg = _load(site, path)
    assert msg is not None, f"{path} loads"
    return msg


def _parse_key(key: str) -> KeyPath:
    """``"tasks[1].weight"`` -> ``("tasks", 1, "weight")``."""
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key))


def _located(site: Site, path: Path, msg: str, anywhere: bool = False) -> None:
    """Check ``msg`` names the file and a key path at its line (that of its nearest
    spelled-out parent for a key the YAML leaves out). Unless ``anywhere``, the key is
    the mutated one or a list holding it (e.g. ``tasks[0].positive`` for an item)."""
    m = re.fullmatch(re.escape(str(path)) + r":(\d+): (\S+): (expected|found) .+", msg)
    assert m is not None, msg
    key = _parse_key(m.group(2))
    assert key == site.path[: len(key)] or anywhere, msg
    lines = LINES[site.spec]
    while key not in lines and key:
        key = key[:-1]
    assert int(m.group(1)) == lines[key], msg
