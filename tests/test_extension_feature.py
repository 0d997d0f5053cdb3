"""Adding a feature kind is one class: two toy kinds registered from this test alone.

``flag`` (sparse) maps yes/no-like cells to embedding rows 1 and 2 (0: missing) and fits
nothing; ``frequency`` (dense) replaces a category by its share of the training rows, a
statistic it fits and saves under its own section of ``transforms.json``. Neither is named
anywhere in the library: a YAML spec that says ``type: flag`` / ``type: frequency`` then
loads, fits, encodes and trains like one with built-in kinds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.data.validate import fit_and_encode
from torchrec_ple.features import EncodedFeature, FeatureKind, FitKey, FitOptions, Fitter
from torchrec_ple.features.columns import column, missing_policy, normalize_ids
from torchrec_ple.features.fit_state import VocabCounter
from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.spec import SpecError, parse_spec
from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.errors import DataError, format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.schema import FeatureSpec
from torchrec_ple.train.trainer import fit

TRUE, FALSE = ("1", "true", "yes", "y"), ("0", "false", "no", "n")


class Flag(FeatureKind):
    """A yes/no cell: row 2 for yes, 1 for no, 0 for missing or anything else."""

    @classmethod
    def check(cls, checks: Checks, f: FeatureSpec, path: KeyPath) -> None:
        super().check(checks, f, path)  # on_missing (default oov), no on_out_of_range
        for k in ("vocab", "hash_buckets", "num_embeddings", "buckets", "max_len"):
            if getattr(f, k) is not None:
                checks.err(path + (k,), f"no {k} on a flag feature", format_value(getattr(f, k)))

    @classmethod
    def num_embeddings(cls, f: FeatureSpec, fitted: Any) -> Optional[int]:
        return 3

    @classmethod
    def encode(cls, f: FeatureSpec, table: pa.Table, fitted: Any) -> EncodedFeature:
        text = pc.utf8_lower(column(table, f.column).cast(pa.string()))
        yes = pc.is_in(text, value_set=pa.array(TRUE)).fill_null(False).to_numpy(False)
        no = pc.is_in(text, value_set=pa.array(FALSE)).fill_null(False).to_numpy(False)
        ids = np.where(yes, 2, np.where(no, 1, 0)).astype(np.int64)
        out = EncodedFeature(ids=ids, report={"missing": int((ids == 0).sum())})
        missing_policy(f, ids == 0, out.drop, "values other than yes/no")
        return out


class Shares(Fitter):
    def __init__(self) -> None:
        self._counter = VocabCounter()

    def update(self, parts: List[pa.Array]) -> None:
        self._counter.update(parts)

    def finish(self) -> Any:
        values, counts = self._counter.counts()
        return {str(v): float(c) / float(counts.sum()) for v, c in zip(values, counts)}


class Frequency(FeatureKind):
    """A category replaced by its share of the training rows (0 when unseen or missing)."""

    @classmethod
    def is_sparse(cls, f: Any) -> bool:
        return False

    @classmethod
    def fit_key(cls, f: FeatureSpec, table: str) -> Optional[FitKey]:
        return ("frequency", f.name)

    @classmethod
    def fitter(cls, f: FeatureSpec, options: FitOptions) -> Fitter:
        return Shares()

    @classmethod
    def fit_part(cls, f: FeatureSpec, table: pa.Table) -> pa.Array:
        return normalize_ids(column(table, f.column))

    @classmethod
    def encode(cls, f: FeatureSpec, table: pa.Table, fitted: Any) -> EncodedFeature:
        keys = normalize_ids(column(table, f.column)).cast(pa.string()).to_pylist()
        dense = np.array([fitted.get(k, 0.0) if k is not None else 0.0 for k in keys])
        return EncodedFeature(dense=dense)


SPEC = """
data:
  train: {path: train.parquet}
  validation: {path: valid.parquet}
features:
  - {name: member, type: flag, embedding: {dim: 4}}
  - {name: city_share, column: city, type: frequency}
  - {name: city, type: categorical, embedding: {dim: 4}}
  - {name: price, type: numeric}
tasks:
  - {name: ctr, label: click, type: binary}
model: {architecture: mmoe, shared_experts: 2, expert_dims: [8], tower_dims: [4]}
train: {batch_size: 8, epochs: 1, progress: false, tensorboard: false}
"""


def _table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    member = ["yes", "No", "1", None, "maybe", "TRUE", "n", "y"]
    return pa.table(
        {
            "member": [member[i % len(member)] for i in range(n)],
            "city": [["paris", "rome", "paris", "oslo"][i % 4] for i in range(n)],
            "price": rng.normal(10, 2, n),
            "click": rng.integers(0, 2, n),
        }
    )


@pytest.fixture
def toy_kinds():
    with FEATURE_KINDS.registered("flag", Flag), FEATURE_KINDS.registered("frequency", Frequency):
        yield


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    pq.write_table(_table(40, 0), tmp_path / "train.parquet")
    pq.write_table(_table(16, 1), tmp_path / "valid.parquet")
    (tmp_path / "spec.yaml").write_text(SPEC)
    return tmp_path / "spec.yaml"


def test_toy_kinds_fit_and_encode(toy_kinds, spec_path: Path) -> None:
    spec = parse_spec(spec_path.read_text(), spec_path)
    assert [f.name for f in spec.sparse_features] == ["member", "city"]
    assert [f.name for f in spec.dense_features] == ["city_share", "price"]
    assert spec.features[0].on_missing == "oov"  # the base class's policy default
    train = _table(8, 0)
    transforms, enc, _ = fit_and_encode(spec, train, train.slice(0, 0))
    assert enc.keys == ["member", "city"]
    assert enc.values[0].tolist() == [2, 1, 2, 0, 0, 2, 1, 2]
    assert enc.offsets[0] is None
    assert enc.report["features"]["member"] == {"missing": 2}
    assert transforms.dense_dim == 2
    shares = transforms.state["frequency"]["city_share"]
    assert shares == {"paris": 0.5, "rome": 0.25, "oslo": 0.25}
    assert enc.dense[:4, 0].tolist() == [0.5, 0.25, 0.5, 0.25]
    assert [(t.name, t.num_embeddings) for t in transforms.tables()] == [
        ("member", 3),
        ("city", 4),
    ]


class OffByOneFlag(Flag):
    """A buggy kind: yes maps to row 3 of a 3-row table."""

    @classmethod
    def encode(cls, f: FeatureSpec, table: pa.Table, fitted: Any) -> EncodedFeature:
        out = super().encode(f, table, fitted)
        assert out.ids is not None
        out.ids = np.where(out.ids == 2, 3, out.ids)
        return out


def test_a_kind_whose_ids_leave_the_table_is_stopped_in_one_line(spec_path: Path) -> None:
    # fbgemm's per-step bounds check is off: encode is where an id outside the table stops
    with (
        FEATURE_KINDS.registered("flag", OffByOneFlag),
        FEATURE_KINDS.registered("frequency", Frequency),
    ):
        spec = parse_spec(spec_path.read_text(), spec_path)
        with pytest.raises(DataError) as err:
            fit_and_encode(spec, _table(8, 0), _table(0, 0))
    assert str(err.value).splitlines() == [str(err.value)]
    assert "'member'" in str(err.value) and "ids in [0, 3)" in str(err.value)
    assert "found ids from 0 to 3" in str(err.value) and "kind 'flag'" in str(err.value)


def test_toy_kind_state_saves_and_loads(toy_kinds, spec_path: Path, tmp_path: Path) -> None:
    spec = parse_spec(spec_path.read_text(), spec_path)
    transforms = FeatureTransforms.fit(spec, _table(40, 0))
    transforms.save(tmp_path / "transforms.json")
    again = FeatureTransforms.load(spec, tmp_path / "transforms.json")
    table = _table(12, 3)
    assert np.array_equal(again.encode(table).dense, transforms.encode(table).dense)


def test_toy_kinds_train_one_epoch(toy_kinds, spec_path: Path, tmp_path: Path) -> None:
    spec = parse_spec(spec_path.read_text(), spec_path)
    fit(spec, tmp_path / "run", log=lambda line: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["tasks"]["ctr"]["auc"] <= 1.0
    saved = json.loads((tmp_path / "run" / "transforms.json").read_text())
    assert set(saved["frequency"]["city_share"]) == {"paris", "rome", "oslo"}


def test_toy_kind_checks_its_keys(toy_kinds, tmp_path: Path) -> None:
    text = SPEC.replace("type: flag,", "type: flag, hash_buckets: 10,")
    with pytest.raises(SpecError, match=r"features\[0\]\.hash_buckets: expected no hash_buckets"):
        parse_spec(text, tmp_path / "spec.yaml")


def test_unknown_feature_type_is_one_clear_line(tmp_path: Path) -> None:
    text = SPEC.replace("type: flag,", "type: categorcal,")
    with pytest.raises(SpecError) as err:
        parse_spec(text, tmp_path / "spec.yaml")
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert "features[0].type: expected one of categorical, sequence, numeric" in msg, msg
    assert "did you mean 'categorical'" in msg, msg
