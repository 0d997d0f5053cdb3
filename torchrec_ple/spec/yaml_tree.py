"""YAML text -> plain data plus the line of every key path, safely.

The YAML is composed with PyYAML's ``SafeLoader`` (nothing is ever evaluated; libyaml's
when available) and walked node by node, so every key path keeps its line for located
errors. Only plain mappings, lists and scalars are accepted; duplicate keys, recursive
aliases and alias bombs ("billion laughs": more than :data:`MAX_NODES` nodes) are refused
with a one-line :class:`~torchrec_ple.spec.errors.SpecError`.

Example::

    raw, lines = read_yaml("train:\n  epochs: 3\n", "spec.yaml")
    lines[("train", "epochs")]  # 2
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Set, Tuple

import yaml

from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.keys import KeyPath, key_part, key_str

__all__ = ["MAX_NODES", "YamlWalker", "read_yaml"]

# libyaml when available: the same safe constructors, a faster parser.
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 200_000  # guards against alias bombs ("billion laughs")


def read_yaml(text: str, file: Optional[str] = None) -> Tuple[Any, Dict[KeyPath, int]]:
    """Plain data of a YAML document and the 1-based line of every key path.

    Args:
        text (str): the YAML.
        file (Optional[str]): the file it came from, named in errors.

    Returns:
        Tuple[Any, Dict[KeyPath, int]]: the data (``None`` for an empty document) and the
        line of each key path (``()``: the document).

    Raises:
        SpecError: invalid YAML, a non-plain tag, a duplicate key, a recursive alias or an
            alias bomb, located.
    """
    lines: Dict[KeyPath, int] = {}
    loader: Optional[yaml.SafeLoader] = None
    try:
        loader = SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, lines
        lines[()] = node.start_mark.line + 1
        return YamlWalker(loader, lines, file).walk(node, ()), lines
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


class YamlWalker:
    """Turns composed YAML nodes into plain data, recording lines and rejecting oddities.

    Args:
        loader (yaml.SafeLoader): the loader that composed the nodes (it constructs the
            scalars and resolves merge keys).
        lines (Dict[KeyPath, int]): filled with the 1-based line of every key path.
        file (Optional[str]): the file, named in errors.
    """

    def __init__(self, loader: yaml.SafeLoader, lines: Dict[KeyPath, int], file: Optional[str]):
        self.loader, self.lines, self.file = loader, lines, file
        self.budget = MAX_NODES
        self.active: Set[int] = set()  # nodes on the current path (recursive aliases)
        self.own_keys: Dict[int, Set[int]] = {}  # mapping -> its own key nodes (not merged)

    def fail(self, node: yaml.Node, path: KeyPath, expected: str, found: str) -> SpecError:
        """A located error at ``node``."""
        line = node.start_mark.line + 1
        return SpecError(key_str(path), expected, found, file=self.file, line=line)

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        """The value of a scalar node (PyYAML's safe constructors)."""
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError) as e:  # e.g. a date like 2020-13-45
            raise self.fail(node, path, "a valid YAML scalar", f"{node.value!r} ({e})") from None

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        """The plain data of ``node`` (at key path ``path``), recursively."""
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
                return self.sequence(node, path)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def sequence(self, node: yaml.SequenceNode, path: KeyPath) -> list:
        if node.tag != "tag:yaml.org,2002:seq":
            raise self.fail(node, path, "a plain YAML list", f"tag {node.tag}")
        out = []
        for i, item in enumerate(node.value):
            self.lines.setdefault(path + (i,), item.start_mark.line + 1)
            out.append(self.walk(item, path + (i,)))
        return out

    def mapping(self, node: yaml.Node, path: KeyPath) -> Dict[Any, Any]:
        if node.tag != "tag:yaml.org,2002:map":
            raise self.fail(node, path, "a plain YAML mapping", f"tag {node.tag}")
        if id(node) not in self.own_keys:
            self.own_keys[id(node)] = {id(k) for k, _ in node.value}
            self.loader.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
        own = self.own_keys[id(node)]
        out: Dict[Any, Any] = {}
        seen: Set[Any] = set()
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.fail(k, path, "a plain key", "a mapping or list used as a key")
            key = self.scalar(k, path)
            p = path + (key_part(key),)
            if id(k) in own:
                if key in seen:
                    raise self.fail(k, p, "each key once", f"duplicate key {format_value(key)}")
                seen.add(key)
            # Merged keys come first, so the mapping's own keys win, as in safe_load.
            self.lines[p] = k.start_mark.line + 1
            out[key] = self.walk(v, p)
        return out
