"""The reader protocol: a data source plans shards and reads them as Arrow chunks.

A data source (``data.source`` in the spec) is one :class:`Reader` subclass in one file,
registered in :data:`torchrec_ple.registry.READERS`::

    from torchrec_ple.data.readers.base import Reader, RowRange
    from torchrec_ple.registry import READERS

    @READERS.register("my_source")
    class MyReader(Reader):
        def plan(self, world_size):       # shards per rank, from metadata
            return cut_rows([("all", self._count())], world_size)
        def read(self, shard, columns):   # the shard's rows, a chunk at a time
            yield pyarrow.table(...)
        def columns(self):                # the columns the source holds
            return [...]

The data path (:mod:`torchrec_ple.data.pipeline`) does the rest for every source: fitting
the transforms, encoding, batches per rank (cached in memory, or streamed), the checks
and the reports. A source's settings live under ``data.options`` (a mapping the reader
reads and checks itself in :meth:`Reader.check_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from torchrec_ple.spec.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from torchrec_ple.spec.check_base import Checks
    from torchrec_ple.spec.keys import KeyPath
    from torchrec_ple.spec.schema import DataSpec, Spec

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of one unit of a source (a file, a row group, a frame).

    The shard of most readers: small and picklable (it travels to DataLoader workers).

    Args:
        key (Any): which unit (hashable, picklable: a path, a (path, group) pair...).
        start (int): first row, counted inside the unit.
        stop (int): one past the last row.
    """

    key: Any
    start: int
    stop: int

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def cut_rows(units: Sequence[Tuple[Any, int]], world_size: int) -> List[List[RowRange]]:
    """Lay units of rows end to end and cut them into ``world_size`` equal ranges.

    Every rank gets the same number of rows (+-1); a unit crossing a cut becomes two
    shards, each read by one rank.

    Args:
        units (Sequence[Tuple[Any, int]]): (key, rows) of each unit, in read order.
        world_size (int): ranks.

    Returns:
        List[List[RowRange]]: the shards of each rank, in read order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    total = sum(n for _, n in units)
    cuts = [total * r // world_size for r in range(world_size + 1)]
    plan: List[List[RowRange]] = [[] for _ in range(world_size)]
    pos = 0
    for key, n in units:
        # The ranks whose [cut_r, cut_r+1) intersects this unit's rows [pos, pos + n).
        for r in range(world_size):
            lo, hi = max(pos, cuts[r]), min(pos + n, cuts[r + 1])
            if lo < hi:
                plan[r].append(RowRange(key, lo - pos, hi - pos))
        pos += n
    return plan


def assign_whole(shards: Sequence[Any], world_size: int) -> List[List[Any]]:
    """Give whole shards (``num_rows`` each) to ranks, or workers, greedily.

    Largest first, each to the rank with the fewest rows; each rank keeps the shards'
    original order. Deterministic.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    out: List[List[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for i in sorted(range(len(shards)), key=lambda i: (-shards[i].num_rows, i)):
        k = min(range(world_size), key=lambda k: (loads[k], k))
        out[k].append(i)
        loads[k] += shards[i].num_rows
    return [[shards[i] for i in sorted(idx)] for idx in out]


class Reader:
    """The rows of one split (``train`` or ``validation``) of a spec's data source.

    Subclasses implement :meth:`plan`, :meth:`read` and :meth:`columns`; the others have
    defaults. A shard is any small picklable object with a ``num_rows`` attribute
    (:class:`RowRange` for most); ``plan`` counts rows from metadata where it can, so
    that every rank knows the common number of batches without reading.

    Args:
        spec (Spec): the whole spec (``spec.data`` holds the source's settings).
        split (str): ``train`` or ``validation``.
    """

    #: Whether ``data.streaming: true`` may read this source (else the spec refuses it).
    streams: bool = True

    def __init__(self, spec: Spec, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._spec = spec
        self._split = split

    @property
    def split(self) -> str:
        return self._split

    # -- the spec
    @classmethod
    def check_spec(cls, checks: Checks, data: DataSpec, path: KeyPath) -> None:
        """Report what is wrong in the ``data`` section for this source (``checks.err``).

        Args:
            checks (Checks): the spec checker.
            data (DataSpec): the converted ``data`` section.
            path (KeyPath): its key path, ``("data",)``.

        The default refuses ``data.options``: a source that reads options checks them
        in its own ``check_spec`` (without calling this one).
        """
        if data.options and checks.given(path + ("options",)):
            from torchrec_ple.spec.errors import format_value

            checks.err(
                path + ("options",),
                f"no options for the '{data.source}' source",
                format_value(data.options),
            )

    # -- what the data holds
    def exists(self) -> bool:
        """Whether the split has rows to read (a validation split may have none)."""
        return True

    def location(self) -> str:
        """Where the rows come from, for messages (a path, ``synthetic train data``)."""
        return f"{self._spec.data.source} {self._split} data"

    def columns(self) -> List[str]:
        """The columns the source holds (checked against the spec before reading)."""
        raise NotImplementedError

    # -- reading
    def plan(self, world_size: int) -> List[List[Any]]:
        """The shards of each of ``world_size`` ranks; every row in exactly one."""
        raise NotImplementedError

    def read(self, shard: Any, columns: Optional[Sequence[str]]) -> Iterator[pa.Table]:
        """The rows of one shard (only ``columns``; None: all), in chunks."""
        raise NotImplementedError

    def read_all(self, columns: Optional[Sequence[str]]) -> pa.Table:
        """Every row of the split as one table (the in-memory data path): at least
        ``columns`` (None: all), which a reader that makes its rows whole may exceed.

        Default: the chunks of every shard, concatenated. A reader may override it to
        read a whole table at once; it must hold the same rows in the same order.
        """
        tables = [t for shard in self.plan(1)[0] for t in self.read(shard, columns)]
        if not tables:
            raise DataError(file=self.location(), expected="at least one row", found="none")
        return pa.concat_tables(tables)

    def release(self) -> None:
        """Drop what the reader keeps between reads (the split was read whole). Default:
        nothing kept."""

    # -- a validation split held out of the training rows (in memory only)
    def held_out(self) -> bool:
        """Whether this split's rows are a part of the training rows (``select`` picks
        them from the training split's :meth:`read_all`). Default: False."""
        return False

    def select(self, table: pa.Table) -> pa.Table:
        """This split's rows of a table read whole: all of them, unless rows are held out
        for validation (the training split then keeps the others). Default: ``table``."""
        return table

    def require(self, columns: Sequence[str]) -> None:
        """Raise the one-line :class:`DataError` naming a wanted column the data lacks."""
        from torchrec_ple.data.sources import missing_column_error

        error = missing_column_error(self.location(), self.columns(), columns)
        if error is not None:
            raise error
