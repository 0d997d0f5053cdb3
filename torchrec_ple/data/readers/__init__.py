"""Data sources: one :class:`~torchrec_ple.data.readers.base.Reader` per file.

Importing this package registers the built-in sources in
:data:`torchrec_ple.registry.READERS` (``files``, ``synthetic``, ``feast``, in this
order: the order of the names in messages); the registry imports it on its first lookup.
A new source is one module with one registered ``Reader`` subclass (see
:mod:`torchrec_ple.data.readers.base`), imported before the spec is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from torchrec_ple.data.readers.base import Reader, RowRange, assign_whole, cut_rows
from torchrec_ple.registry import READERS, import_package

if TYPE_CHECKING:  # pragma: no cover
    from torchrec_ple.spec.schema import Spec

for _name in ("files", "synthetic", "feast"):
    importlib.import_module(f"torchrec_ple.data.readers.{_name}")
import_package(__name__, __path__)  # a file added here registers with no other edit


def make_reader(spec: Spec, split: str) -> Reader:
    """The reader of ``spec.data.source`` for ``split`` (``train`` or ``validation``)."""
    return READERS.get(spec.data.source)(spec, split)


__all__ = ["READERS", "Reader", "RowRange", "assign_whole", "cut_rows", "make_reader"]
