"""The ``synthetic`` source: the built-in generator (:mod:`torchrec_ple.data.synthetic`).

The generator draws the train and validation rows together from one seed (the label
standardization sees every row), so a shard is a row range of a split generated whole
once per process and kept while the spec's parameters stay the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from torchrec_ple.data.readers.base import Reader, RowRange, cut_rows
from torchrec_ple.data.synthetic import generate
from torchrec_ple.registry import READERS
from torchrec_ple.spec.schema import Spec, SyntheticSpec

# The last generated (train, validation) tables, by the generator's parameters.
_GENERATED: Dict[Tuple[Any, ...], Tuple[pa.Table, pa.Table]] = {}


def generated(s: SyntheticSpec) -> Tuple[pa.Table, pa.Table]:
    """``generate(s)``, computed once while ``s`` stays the same."""
    key = dataclasses.astuple(s)
    if key not in _GENERATED:
        _GENERATED.clear()  # one at a time: a tuning study varies nothing here
        _GENERATED[key] = generate(s)
    return _GENERATED[key]


@READERS.register("synthetic")
class SyntheticReader(Reader):
    """``data.source: synthetic``: ``data.synthetic``'s generator parameters.

    Args:
        spec (Spec): the spec.
        split (str): ``train`` or ``validation``.
    """

    streams = False  # the rows are generated whole: nothing to gain from streaming

    def __init__(self, spec: Spec, split: str) -> None:
        super().__init__(spec, split)
        self._synthetic = spec.data.synthetic

    def _table(self) -> pa.Table:
        return generated(self._synthetic)[0 if self.split == "train" else 1]

    def location(self) -> str:
        return f"synthetic {self.split} data"

    def columns(self) -> List[str]:
        from torchrec_ple.spec.check_data import synthetic_columns

        return list(synthetic_columns(self._synthetic))

    def plan(self, world_size: int) -> List[List[RowRange]]:
        s = self._synthetic
        rows = s.train_rows if self.split == "train" else s.validation_rows
        return cut_rows([(self.split, rows)], world_size)

    def read(self, shard: RowRange, columns: Optional[Sequence[str]]) -> Iterator[pa.Table]:
        table = self._table().slice(shard.start, shard.num_rows)
        yield table.select(list(columns)) if columns is not None else table

    def read_all(self, columns: Optional[Sequence[str]]) -> pa.Table:
        return self._table()  # every column, as generated

    def release(self) -> None:
        _GENERATED.clear()
