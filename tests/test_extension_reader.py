"""Adding a data source is one class: a toy reader registered from this test alone.

``CountingReader`` is defined and registered here only (nothing in the library names it):
it generates rows from a seed, plans them as row ranges over ranks, reads them as Arrow
chunks and checks its own ``data.options``. A YAML spec that says ``data.source:
counting`` then runs through the one data path, in memory and streamed, and fits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pytest

from torchrec_ple.data.pipeline import open_splits
from torchrec_ple.data.readers.base import Reader, RowRange, cut_rows
from torchrec_ple.registry import READERS
from torchrec_ple.spec import SpecError, parse_spec
from torchrec_ple.spec.errors import format_value

NAME = "counting"


class CountingReader(Reader):
    """Rows ``0..rows-1`` (train) then ``rows..`` (validation, a quarter as many): an
    ``id`` column, a numeric ``x``, a categorical ``cat`` and a label ``y = x > 0``.

    Options: ``rows`` (int >= 1, training rows) and ``seed`` (int). Every chunk holds at
    most ``chunk`` rows, so a shard is read in several.
    """

    chunk = 7

    def __init__(self, spec: Any, split: str) -> None:
        super().__init__(spec, split)
        opts = spec.data.options
        self._rows = int(opts["rows"]) if split == "train" else int(opts["rows"]) // 4
        self._first = 0 if split == "train" else int(opts["rows"])
        self._seed = int(opts.get("seed", 0))

    @classmethod
    def check_spec(cls, checks: Any, data: Any, path: Any) -> None:
        rows = data.options.get("rows")
        if not isinstance(rows, int) or rows < 4:
            checks.err(path + ("options", "rows"), "an int >= 4", format_value(rows))

    def columns(self) -> List[str]:
        return ["id", "x", "cat", "y"]

    def plan(self, world_size: int) -> List[List[RowRange]]:
        return cut_rows([(self.split, self._rows)], world_size)

    def read(self, shard: RowRange, columns: Optional[Sequence[str]]) -> Iterator[pa.Table]:
        for lo in range(shard.start, shard.stop, self.chunk):
            ids = np.arange(lo, min(lo + self.chunk, shard.stop)) + self._first
            x = np.sin(ids * 0.7 + self._seed)  # a function of the row: any chunking agrees
            table = pa.table(
                {"id": ids, "x": x, "cat": [f"c{i % 5}" for i in ids], "y": (x > 0).astype(int)}
            )
            yield table.select(list(columns)) if columns is not None else table


SPEC = """
data:
  source: counting
  options: {rows: 120, seed: 3}
  streaming: false
features:
  - {name: cat, type: categorical, embedding: {dim: 4}}
  - {name: x, type: numeric, normalize: none}
  - {name: rid, column: id, type: numeric, normalize: none}
tasks:
  - {name: pos, label: y, type: binary}
train: {epochs: 1, batch_size: 16, seed: 0}
model: {architecture: shared_bottom, expert_dims: [8], tower_dims: [4]}
"""


@pytest.fixture()
def counting() -> Iterator[type]:
    with READERS.registered(NAME, CountingReader):
        yield CountingReader


def _ids(batches: Any) -> List[int]:
    out: List[int] = []
    for b in batches:
        real = b.masks[:, 0].numpy() > 0
        out += b.dense[:, 1].numpy()[real].astype(np.int64).tolist()
    return out


@pytest.mark.parametrize("streaming", [False, True])
def test_toy_source_runs_through_the_data_path(counting, tmp_path: Path, streaming: bool) -> None:
    text = SPEC.replace("streaming: false", f"streaming: {str(streaming).lower()}")
    spec = parse_spec(text, tmp_path / "spec.yaml")
    path = tmp_path / "transforms.json"
    transforms, train, valid = open_splits(spec, path, fit=True)
    assert path.exists() and transforms.dense_dim == 2
    assert valid is not None and train.num_rows == 120 and valid.num_rows == 30
    train.set_epoch(0)
    batches = list(train)
    assert len(batches) == len(train) == -(-120 // 16)
    assert sorted(_ids(batches)) == list(range(120))  # every training row once
    assert sorted(_ids(valid.eval_batches())) == list(range(120, 150))
    if not streaming:  # cached rows: each epoch a new permutation of all of them
        train.set_epoch(1)
        assert _ids(train) != _ids(batches)
    assert train.counts["rows"] == 120 and not train.describe()


def test_toy_source_fits_one_epoch(counting, tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import fit

    spec = parse_spec(SPEC, tmp_path / "spec.yaml")
    fit(spec, tmp_path / "run", log=lambda line: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["tasks"]["pos"]["auc"] <= 1.0


def test_toy_source_checks_its_options(counting, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC.replace("rows: 120", "rows: 2"), tmp_path / "spec.yaml")
    assert "data.options.rows: expected an int >= 4, found 2" in str(e.value)


def test_options_of_a_builtin_source_are_refused(tmp_path: Path) -> None:
    text = "data: {source: synthetic, options: {rows: 3}}\n" + SPEC[SPEC.index("features:") :]
    with pytest.raises(SpecError, match="no options for the 'synthetic' source"):
        parse_spec(text, tmp_path / "spec.yaml")


def test_unknown_source_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(SPEC, tmp_path / "spec.yaml")  # not registered outside the fixture
    message = str(e.value)
    assert len(message.strip().splitlines()) == 1, message
    assert "data.source: expected one of files, synthetic, feast" in message
    assert f"'{NAME}'" in message
