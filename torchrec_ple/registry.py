"""Named registries: the plugin's extension points, one per concept.

An extension (a head, a feature kind, a data source, a loss weighting) is one class in one
file that registers itself under a name::

    from torchrec_ple.registry import HEADS

    @HEADS.register("my_head")
    class MyHead(MultiTaskHead):
        ...

The spec refers to it by that name (``model.architecture: my_head``); nothing else in the
library needs an edit. The built-in entries live in ordinary modules that the registry
imports the first time it is asked for a name (``builtins``): the spec layer checks names
against a registry without importing the layers above it at its own import, and an extension
only has to be imported (by the user's code, or a test) before the spec is loaded.

This module sits below every layer (spec, data, modules, train): it imports nothing of the
package at import time.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import pkgutil
from typing import (
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    TypeVar,
)

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to entries (classes, usually) for one extension point.

    Args:
        what (str): what an entry is, for messages (``"architecture"``).
        builtins (Sequence[str]): modules whose import registers the built-in entries;
            imported on the first lookup.

    Example::

        HEADS = Registry("architecture", ["torchrec_ple.modules.heads"])
        HEADS.register("ple")(PLE)
        HEADS.get("ple")  # PLE
    """

    def __init__(self, what: str, builtins: Sequence[str] = ()) -> None:
        self.what = what
        self._builtins = list(builtins)
        self._entries: Dict[str, T] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a builtin module may look names up while importing
            for module in self._builtins:
                importlib.import_module(module)

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """A decorator that registers its argument under ``name``.

        Args:
            name (str): the name the spec uses.
            replace (bool): allow replacing an entry of that name. Default: False (a second
                entry of one name is a programming error, reported at import).

        Returns:
            Callable[[T], T]: the decorator (it returns the entry unchanged).
        """

        def add(entry: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not entry:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> None:
        """Removes ``name`` (tests that register a toy entry use :meth:`registered`)."""
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """Registers ``entry`` for the duration of a ``with`` block (tests, notebooks)."""
        self._load()
        self.register(name)(entry)
        try:
            yield entry
        finally:
            self.unregister(name)

    def get(self, name: str) -> T:
        """The entry called ``name``.

        Raises:
            KeyError: with one line naming the known entries and the closest one.
        """
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def find(self, name: str) -> Optional[T]:
        """The entry called ``name``, or None."""
        self._load()
        return self._entries.get(name)

    def names(self) -> List[str]:
        """Registered names, built-ins first, in registration order."""
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered."""
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.what} {name!r}{hint}; expected one of {', '.join(names)}"


def import_package(package: str, path: Iterable[str]) -> List[str]:
    """Import every module of a package, so each built-in entry in it registers itself.

    A built-ins module calls this after importing its listed entries (whose order is the
    order of the names in messages): a new file dropped into the package is then found
    and registered with no other edit, after the listed ones.

    Args:
        package (str): the package's name (``__name__`` of its ``__init__``).
        path (Iterable[str]): its ``__path__``.

    Returns:
        List[str]: the modules' names, sorted.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(list(path)))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


#: Multi-task heads (``model.architecture``); see :mod:`torchrec_ple.modules.heads`.
HEADS: Registry = Registry("architecture", ["torchrec_ple.modules.heads"])
#: Feature kinds (``features[].type``); see :mod:`torchrec_ple.features`.
FEATURE_KINDS: Registry = Registry("feature type", ["torchrec_ple.features"])
#: Data sources (``data.source``); see :mod:`torchrec_ple.data.readers`.
READERS: Registry = Registry("data source", ["torchrec_ple.data.readers"])
#: Loss weightings (``train.loss_weighting``); see :mod:`torchrec_ple.train.weightings`.
LOSS_WEIGHTINGS: Registry = Registry("loss weighting", ["torchrec_ple.train.weightings"])
