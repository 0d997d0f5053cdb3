"""The ``feast`` source: point-in-time rows of a Feast feature repo (``data.feast``).

A shard is a row range of an entity dataframe file, retrieved with
``get_historical_features`` when read; in memory the whole entity dataframe is retrieved
in one call (as :func:`~torchrec_ple.data.feast.load_feast_tables` does). Without
``validation_entity_df``, a ``validation_fraction`` of the entity rows is held out, at
random or the latest (``split: time``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence

import pyarrow as pa

from torchrec_ple.data.readers.base import Reader, RowRange, cut_rows
from torchrec_ple.registry import READERS
from torchrec_ple.spec.schema import FEAST_SPLITS, Spec

if TYPE_CHECKING:  # pragma: no cover
    from torchrec_ple.spec.check_base import Checks
    from torchrec_ple.spec.keys import KeyPath
    from torchrec_ple.spec.schema import DataSpec


@READERS.register("feast")
class FeastReader(Reader):
    """``data.source: feast``: entity rows joined point-in-time to a repo's features.

    Args:
        spec (Spec): the spec (``spec.data.feast`` set).
        split (str): ``train`` or ``validation``.
    """

    streams = False  # one retrieval per entity file; streaming it is not offered yet

    def __init__(self, spec: Spec, split: str) -> None:
        super().__init__(spec, split)
        f = spec.data.feast
        assert f is not None, "the spec check requires data.feast"
        self._feast = f
        self._store: Any = None
        own = f.validation_entity_df if split == "validation" else None
        self._path: Path = own or f.entity_df

    @classmethod
    def check_spec(cls, checks: Checks, data: DataSpec, path: KeyPath) -> None:
        super().check_spec(checks, data, path)
        if data.feast is None:
            checks.err(path + ("feast",), "a feast section for the 'feast' source", "nothing")
            return
        F = path + ("feast",)
        if (data.feast.feature_service is None) == (data.feast.features is None):
            checks.err(
                F,
                "exactly one of feature_service, features",
                "both" if data.feast.features else "neither",
            )
        checks.choice(F + ("split",), data.feast.split, FEAST_SPLITS)

    def __getstate__(self) -> Any:
        return {**self.__dict__, "_store": None}  # a store stays in its process

    def location(self) -> str:
        return f"Feast rows of {self._feast.entity_df} ({self.split})"

    def held_out(self) -> bool:
        return self.split == "validation" and self._feast.validation_entity_df is None

    def exists(self) -> bool:
        return not self.held_out() or self._spec.data.validation_fraction > 0

    def _rows(self, rows: Optional[tuple] = None) -> pa.Table:
        from torchrec_ple.data.feast import entity_table, open_store

        f = self._feast
        if self._store is None:
            self._store = open_store(f.repo_path)
        features = f.feature_service if f.feature_service is not None else list(f.features or [])
        return entity_table(
            self._store, self._path, features, f.timestamp_column, f.full_feature_names,
            f.fill, rows,
        )  # fmt: skip

    def columns(self) -> List[str]:
        return self._rows((0, 1)).column_names

    def plan(self, world_size: int) -> List[List[RowRange]]:
        from torchrec_ple.data.feast import read_entity_df

        rows = len(read_entity_df(self._path, self._feast.timestamp_column))
        return cut_rows([(str(self._path), rows)], world_size)

    def read(self, shard: RowRange, columns: Optional[Sequence[str]]) -> Iterator[pa.Table]:
        table = self._rows((shard.start, shard.stop))
        yield table.select(list(columns)) if columns is not None else table

    def read_all(self, columns: Optional[Sequence[str]]) -> pa.Table:
        return self._rows()  # every column: the hold-out needs the timestamps

    def select(self, table: pa.Table) -> pa.Table:
        from torchrec_ple.data.feast import holdout_rows

        f, frac = self._feast, self._spec.data.validation_fraction
        if f.validation_entity_df is not None:
            return table
        if frac <= 0:
            return table if self.split == "train" else table.slice(0, 0)
        train, valid = holdout_rows(table, frac, f.split, f.timestamp_column, self._spec.train.seed)
        return table.take(train if self.split == "train" else valid)
