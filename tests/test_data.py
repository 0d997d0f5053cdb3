"""Transforms and the vectorized batch builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrec_ple.data.batch import BatchLoader, build_batch
from torchrec_ple.data.synthetic import generate
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec import DataError, SyntheticSpec, parse_spec

SPEC = """
data: {train: {path: train.parquet}}
features:
  - {name: user, column: uid, type: categorical, vocab: {min_count: 2}, embedding: {dim: 4}}
  - {name: item, column: iid, type: categorical, hash_buckets: 50, embedding: {dim: 4, table: items}}
  - {name: hist, column: hist, type: sequence, max_len: 3, hash_buckets: 50, embedding: {table: items}}
  - {name: cat_list, column: tags, type: sequence, separator: "|", embedding: {dim: 2}}
  - {name: ident, column: pos, type: categorical, num_embeddings: 5, embedding: {dim: 2}}
  - {name: age, column: age, type: numeric, normalize: standard}
  - {name: mm, column: age, type: numeric, normalize: minmax}
  - {name: lg, column: money, type: numeric, normalize: log}
  - {name: raw, column: money, type: numeric, normalize: none, fill: -1}
  - {name: age_b, column: age, type: numeric, buckets: {boundaries: [20, 40]}, embedding: {dim: 2}}
tasks:
  - {name: ctr, label: click, type: binary}
  - {name: cvr, label: buy, type: binary, sample_space: {column: click, equals: 1}}
  - {name: inc, label: income, type: binary, positive: [">50K", ">50K."]}
  - {name: watch, label: watch, type: regression}
"""


def _table() -> pa.Table:
    return pa.table(
        {
            "uid": ["a", "a", "b", "c", None, "a"],
            "iid": [1, 2, 3, 4, 5, None],
            "hist": [[1, 2, 3, 4], [], None, [7], [8, 9], [1]],
            "tags": ["x|y", "y", "", None, "x|x|z", "z"],
            "pos": [0, 1, 2, 3, 4, 0],
            "age": [18.0, 25.0, None, 45.0, 60.0, float("nan")],
            "money": [0.0, 10.0, 100.0, None, 1e6, 3.0],
            "click": [1, 0, 1, 1, 0, 0],
            "buy": [1.0, None, 0.0, 1.0, None, None],
            "income": [">50K", "<=50K", ">50K.", None, "<=50K.", ">50K"],
            "watch": [0.5, 0.1, None, 0.3, 0.9, 1.2],
        }
    )


@pytest.fixture()
def fitted(tmp_path: Path):
    spec = parse_spec(SPEC, tmp_path / "spec.yaml")
    table = _table()
    return spec, FeatureTransforms.fit(spec, table), table


def test_vocab_min_count_and_oov(fitted) -> None:
    spec, tr, table = fitted
    enc = tr.encode(table)
    user = enc.values[enc.keys.index("user")]
    # only "a" is seen twice: row 1; everything else (rare, missing) is OOV row 0
    assert user.tolist() == [1, 1, 0, 0, 0, 1]
    assert enc.report["features"]["user"] == {"missing": 1, "out_of_vocabulary": 2}
    assert tr.num_embeddings(spec.features[0]) == 2


def test_hashing_is_stable_and_shared_table(fitted) -> None:
    spec, tr, table = fitted
    enc = tr.encode(table)
    item = enc.values[enc.keys.index("item")]
    hist = enc.values[enc.keys.index("hist")]
    assert item[5] == 0 and (item[:5] >= 1).all() and (item <= 50).all()
    # the same raw id hashes to the same row in both features of table "items"
    assert hist[enc.offsets[enc.keys.index("hist")][5]] == item[0]
    again = FeatureTransforms.fit(spec, table).encode(table)
    assert np.array_equal(again.values[1], item)
    tables = {t.name: t for t in tr.tables()}
    assert tables["items"].features == ["item", "hist"] and tables["items"].num_embeddings == 51


def test_sequence_truncation_keeps_last_items(fitted) -> None:
    _, tr, table = fitted
    enc = tr.encode(table)
    k = enc.keys.index("hist")
    offs = enc.offsets[k]
    assert np.diff(offs).tolist() == [3, 0, 0, 1, 2, 1]
    item_of = {v: h for v, h in zip([2, 3, 4], enc.values[k][0:3])}
    assert len(item_of) == 3  # ids 2, 3, 4 kept (the last three of [1, 2, 3, 4])
    assert enc.report["features"]["hist"]["empty_lists"] == 2


def test_string_sequences_split(fitted) -> None:
    _, tr, table = fitted
    enc = tr.encode(table)
    k = enc.keys.index("cat_list")
    assert np.diff(enc.offsets[k]).tolist() == [2, 1, 1, 0, 3, 1]


def test_numeric_normalizers(fitted) -> None:
    spec, tr, table = fitted
    enc = tr.encode(table)
    names = [f.name for f in spec.dense_features]
    age = enc.dense[:, names.index("age")]
    filled = np.array([18, 25, 37, 45, 60, 37], dtype=np.float64)  # mean fill = 37
    assert np.allclose(age, (filled - filled.mean()) / filled.std(), atol=1e-5)
    mm = enc.dense[:, names.index("mm")]
    assert mm.min() == pytest.approx(0) and mm.max() == pytest.approx(1)
    lg = enc.dense[:, names.index("lg")]
    assert lg[2] == pytest.approx(np.log1p(100.0), rel=1e-5)
    raw = enc.dense[:, names.index("raw")]
    assert raw[3] == -1 and raw[4] == 1e6
    assert enc.report["features"]["age"]["missing_or_nonfinite_filled"] == 2


def test_buckets_and_identity(fitted) -> None:
    _, tr, table = fitted
    enc = tr.encode(table)
    assert enc.values[enc.keys.index("age_b")].tolist() == [1, 2, 0, 3, 3, 0]
    assert enc.values[enc.keys.index("ident")].tolist() == [0, 1, 2, 3, 4, 0]


def test_labels_and_sample_spaces(fitted) -> None:
    _, tr, table = fitted
    enc = tr.encode(table)
    assert enc.masks[:, 0].tolist() == [1, 1, 1, 1, 1, 1]
    # cvr: clicked AND label present
    assert enc.masks[:, 1].tolist() == [1, 0, 1, 1, 0, 0]
    assert enc.labels[:, 1].tolist() == [1, 0, 0, 1, 0, 0]
    assert enc.labels[:, 2].tolist() == [1, 0, 1, 0, 0, 1]
    assert enc.masks[:, 2].tolist() == [1, 1, 1, 0, 1, 1]
    assert enc.masks[:, 3].tolist() == [1, 1, 0, 1, 1, 1]


def test_save_load_roundtrip(fitted, tmp_path: Path) -> None:
    spec, tr, table = fitted
    tr.save(tmp_path / "t.json")
    json.loads((tmp_path / "t.json").read_text())  # plain JSON
    again = FeatureTransforms.load(spec, tmp_path / "t.json").encode(table)
    ref = tr.encode(table)
    for a, b in zip(ref.values, again.values):
        assert np.array_equal(a, b)
    assert np.array_equal(ref.dense, again.dense)


def test_bad_binary_label_is_a_clear_error(tmp_path: Path) -> None:
    spec = parse_spec(SPEC, tmp_path / "spec.yaml")
    table = _table().set_column(7, "click", pa.array([1, 0, 2, 1, 0, 0]))
    with pytest.raises(
        DataError, match=r"click.*binary labels in \{0, 1\}.*found 1 other values, e.g. 2"
    ):
        FeatureTransforms.fit(spec, table).encode(table)


def test_identity_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    spec = parse_spec(SPEC, tmp_path / "spec.yaml")
    table = _table().set_column(4, "pos", pa.array([0, 1, 2, 3, 9, 0]))
    with pytest.raises(DataError, match=r"pos.*\[0, 5\).*e\.g\. 9"):
        FeatureTransforms.fit(spec, table).encode(table)


def _slow_batch(enc, rows):
    """The obvious per-row implementation the vectorized builder must match."""
    values, lengths = [], []
    for k in range(len(enc.keys)):
        for r in rows:
            if enc.offsets[k] is None:
                values.append(int(enc.values[k][r]))
                lengths.append(1)
            else:
                s, e = enc.offsets[k][r], enc.offsets[k][r + 1]
                values.extend(int(v) for v in enc.values[k][s:e])
                lengths.append(int(e - s))
    return values, lengths


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=20))
def test_vectorized_batch_matches_slow_builder(rows) -> None:
    spec = parse_spec(SPEC, Path("/tmp/spec.yaml"))
    table = _table()
    enc = FeatureTransforms.fit(spec, table).encode(table)
    idx = np.asarray(rows, dtype=np.int64)
    batch = build_batch(enc, idx)
    values, lengths = _slow_batch(enc, rows)
    assert batch.sparse.values().tolist() == values
    assert batch.sparse.lengths().tolist() == lengths
    assert batch.sparse.stride() == len(rows)
    assert np.array_equal(batch.dense.numpy(), enc.dense[idx])
    assert np.array_equal(batch.masks.numpy(), enc.masks[idx])


def test_loader_covers_every_row_once_across_ranks() -> None:
    train, _ = generate(SyntheticSpec(train_rows=1003, validation_rows=1, dim=2))
    spec = parse_spec(
        """
data: {source: synthetic, synthetic: {train_rows: 1003, validation_rows: 1, dim: 2}}
features: [{name: x0, type: numeric}]
tasks: [{name: ctr, label: click}]
""",
        Path("/tmp/s.yaml"),
    )
    enc = FeatureTransforms.fit(spec, train).encode(train)
    enc.dense[:, 0] = np.arange(enc.num_rows)  # tag rows
    seen = []
    sizes = set()
    for rank in range(3):
        loader = BatchLoader(enc, 100, shuffle=True, seed=1, rank=rank, world_size=3)
        loader.set_epoch(2)
        n = 0
        for b in loader:
            n += 1
            keep = b.masks[:, 0] > 0  # padding rows carry zero masks
            seen.extend(b.dense[keep, 0].long().tolist())
        sizes.add(n)
    assert len(sizes) == 1  # every rank runs the same number of batches
    assert sorted(seen) == list(range(1003))


def test_synthetic_generator_properties() -> None:
    train, valid = generate(
        SyntheticSpec(train_rows=20000, validation_rows=100, correlation=0.9, dim=8)
    )
    assert train.num_rows == 20000 and valid.num_rows == 100
    click = train.column("click").to_numpy()
    buy = train.column("buy")
    # buy is defined exactly on clicked rows
    assert np.array_equal(buy.is_valid().to_numpy(zero_copy_only=False), click == 1)
    y1 = train.column("y1").to_numpy()
    y2 = train.column("y2").to_numpy()
    assert np.corrcoef(y1, y2)[0, 1] > 0.5
    lo, _ = generate(SyntheticSpec(train_rows=20000, validation_rows=100, correlation=0.0, dim=8))
    assert abs(np.corrcoef(lo.column("y1").to_numpy(), lo.column("y2").to_numpy())[0, 1]) < 0.3
