"""Numbers users can trust, on the data side: the drop limit over a whole streamed epoch,
NaN ids treated as missing, and normalizer statistics fitted on clipped values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_bad_data import N, frame, set_cell, write_spec
from torchrec_ple.data.streaming import StreamingBatches, fit_transforms
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.data.validate import scan_data
from torchrec_ple.spec import DataError, load_spec, parse_spec

# ------------------------------------------------- max_dropped_fraction over the epoch


def _streaming_spec(folder: Path, df: pd.DataFrame, overrides: List[str]):
    """A streaming spec over ``df`` written as Parquet row groups of 8 rows: every row
    group is read (and encoded) as one chunk, so 41 rows end in a chunk of 1 row."""
    df = df.assign(price=df["price"].astype(float))
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), folder / "train.parquet", row_group_size=8
    )
    path = write_spec(folder, "train.parquet")
    path.write_text(path.read_text().replace("  validation_fraction: 0\n", ""))
    return load_spec(path, ["features[2].on_missing=drop", "data.streaming=true", *overrides])


def _with_tail_row(price: object) -> pd.DataFrame:
    """The 40 clean rows and a 41st (a copy of row 0) whose price is ``price``."""
    df = frame()
    tail = df.iloc[[0]].assign(price=price)
    return pd.concat([df, tail], ignore_index=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_drop_alone_in_a_tail_chunk_counts_against_the_whole_epoch(
    tmp_path: Path, workers: int
) -> None:
    spec = _streaming_spec(tmp_path, _with_tail_row(None), [])
    loader = StreamingBatches(spec, spec.data.train, fit_transforms(spec), 8, num_workers=workers)
    loader.set_epoch(0)
    batches = list(loader)  # 1 dropped row of 41 (2.4%) is within the limit of 10%
    masks = np.concatenate([b.masks.numpy() for b in batches])
    assert int((masks[:, 0] > 0).sum()) == N  # the dropped row is out of every sample space
    encoded = loader.report["encoded"]
    assert encoded["rows"] == N + 1 and encoded["dropped_rows"] == 1
    assert encoded["dropped"] == {"price: missing": 1}


def test_fit_streams_a_tail_chunk_drop_and_counts_it(tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import fit

    spec = _streaming_spec(tmp_path, _with_tail_row(None), [])
    fit(spec, tmp_path / "run", log=lambda s: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    encoded = metrics["data"]["train"]["encoded"]
    assert encoded["rows"] == N + 1 and encoded["dropped"] == {"price: missing": 1}


def test_streamed_drops_over_the_limit_still_fail_in_one_line(tmp_path: Path) -> None:
    # 5 of 41 rows (12%), spread over chunks: 1 in each of the first 4, 1 in the tail.
    df = set_cell(_with_tail_row(None), "price", [1, 9, 17, 25], None)
    spec = _streaming_spec(tmp_path, df, [])
    loader = StreamingBatches(spec, spec.data.train, fit_transforms(spec), 8)
    loader.set_epoch(0)
    with pytest.raises(DataError) as err:
        list(loader)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in (
        "train.parquet",
        "at most data.max_dropped_fraction=0.1 of the rows dropped",
        "5 of 41 rows",
        "price: missing: 5",
    ):
        assert part in msg, f"{part!r} not in {msg!r}"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_chunk_error_is_one_line_naming_its_file(tmp_path: Path, workers: int) -> None:
    spec = _streaming_spec(tmp_path, _with_tail_row(None), ["features[2].on_missing=error"])
    transforms = FeatureTransforms.fit(spec, pq.read_table(tmp_path / "train.parquet"))
    loader = StreamingBatches(spec, spec.data.train, transforms, 8, num_workers=workers)
    loader.set_epoch(0)
    with pytest.raises(DataError) as err:
        list(loader)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert "train.parquet: column 'price': expected no missing" in msg, msg


def test_streamed_drops_over_the_limit_stop_before_training_on_them(tmp_path: Path) -> None:
    # The first chunk alone drops more than 10% of the epoch's 41 rows: no need to read on.
    df = set_cell(_with_tail_row(1.0), "price", list(range(8)), None)
    spec = _streaming_spec(tmp_path, df, [])
    loader = StreamingBatches(spec, spec.data.train, fit_transforms(spec), 8)
    loader.set_epoch(0)
    batches = iter(loader)
    with pytest.raises(DataError, match=r"found 8 of 41 rows in the first 8 read \(price"):
        next(batches)


def test_in_memory_limit_is_unchanged(tmp_path: Path) -> None:
    """The same 41 rows in memory: 1 drop passes, 5 fail (the reference semantics)."""
    for rows, ok in (([], True), ([1, 9, 17, 25], False)):
        df = set_cell(_with_tail_row(None), "price", rows, None)
        df["price"] = df["price"].astype(float)
        spec = load_spec(write_spec(tmp_path), ["features[2].on_missing=drop"])
        table = pa.Table.from_pandas(df, preserve_index=False)
        transforms = FeatureTransforms.fit(spec, table)
        if ok:
            assert transforms.encode(table).report["dropped_rows"] == 1
        else:
            with pytest.raises(DataError, match="5 of 41 rows"):
                transforms.encode(table)


# ------------------------------------------------------------------ NaN ids are missing

ID_SPEC = """
data: {{train: {{path: {path}}}, validation_fraction: 0, max_dropped_fraction: 0.5}}
features:
  - {{name: vocab, column: uid, type: categorical, embedding: {{dim: 4}}{policy}}}
  - {{name: hashed, column: uid, type: categorical, hash_buckets: 97, embedding: {{dim: 4}}{policy}}}
  - {{name: ident, column: uid, type: categorical, num_embeddings: 50, embedding: {{dim: 4}}{ipolicy}}}
  - {{name: bucket, column: uid, type: numeric, buckets: {{num_buckets: 3}}, embedding: {{dim: 2}}{policy}}}
  - {{name: seq_vocab, column: useq, type: sequence, embedding: {{dim: 4}}{policy}}}
  - {{name: seq_hashed, column: useq, type: sequence, hash_buckets: 97, embedding: {{dim: 4}}{policy}}}
  - {{name: price, type: numeric}}
tasks:
  - {{name: ctr, label: click}}
  - {{name: buy, label: buyf, positive: [1]}}
  - {{name: cvr, label: click, sample_space: {{column: buyf, not_null: true}}}}
model: {{architecture: mmoe, shared_experts: 2, expert_dims: [8], tower_dims: [4]}}
"""

ROWS = 30
MISSING = [2, 7, 8, 20]  # rows whose id is missing (NaN in one table, null in the other)


def _id_table(missing: object) -> pa.Table:
    """Float64 ids (integral values, as Spark/pandas write nullable ints) with ``missing``
    (NaN or None) in the ``MISSING`` rows, in scalars, lists and the label ``buyf``."""
    ids: List[object] = [float(i % 7) for i in range(ROWS)]
    seqs: List[object] = [[float(i % 5), float(i % 3)] for i in range(ROWS)]
    buy: List[object] = [float(i % 2) for i in range(ROWS)]
    for r in MISSING:
        ids[r] = missing
        seqs[r] = [float(r % 5), missing]
        buy[r] = missing
    # pa.array keeps NaN as a value (from_pandas=False), as numpy-written Parquet does.
    return pa.table(
        {
            "uid": pa.array(ids, pa.float64()),
            "useq": pa.array(seqs, pa.list_(pa.float64())),
            "price": pa.array(np.linspace(0, 1, ROWS)),
            "click": pa.array(np.arange(ROWS) % 2),
            "buyf": pa.array(buy, pa.float64()),
        }
    )


def _id_spec(folder: Path, policy: str, name: str = "train.parquet"):
    ipolicy = ", on_missing: fill, fill: 0" if policy == "fill" else f", on_missing: {policy}"
    text = ID_SPEC.format(
        path=name,
        policy="" if policy == "fill" else f", on_missing: {policy}",
        ipolicy=ipolicy,
    )
    return parse_spec(text, folder / "spec.yaml")


def _encode_ids(spec, table: pa.Table) -> Dict[str, object]:
    transforms = FeatureTransforms.fit(spec, table)
    enc = transforms.encode(table)
    return {
        "state": transforms.state,
        "values": [v.tolist() for v in enc.values],
        "offsets": [None if o is None else o.tolist() for o in enc.offsets],
        "labels": enc.labels.tolist(),
        "masks": enc.masks.tolist(),
        "report": enc.report,
    }


@pytest.mark.parametrize("policy", ["fill", "drop"])
def test_nan_ids_encode_exactly_as_null_ids(tmp_path: Path, policy: str) -> None:
    """``fill``: sparse features take their default (oov), identity ``fill: 0``."""
    spec = _id_spec(tmp_path, policy)
    nan, null = _encode_ids(spec, _id_table(np.nan)), _encode_ids(spec, _id_table(None))
    assert nan == null
    features = nan["report"]["features"]  # type: ignore[index]
    for name in ("vocab", "hashed", "ident", "bucket", "seq_vocab", "seq_hashed"):
        assert features[name]["missing"] == len(MISSING), name
    vocab = nan["state"]["vocabs"]["vocab"]["values"]  # type: ignore[index]
    assert sorted(vocab) == list(range(7))  # NaN is no vocabulary entry
    tasks = nan["report"]["tasks"]  # type: ignore[index]
    assert tasks["buy"]["label_missing"] == len(MISSING)  # NaN labels are missing labels
    if policy == "fill":  # NaN is not "not null"
        assert tasks["cvr"]["in_sample_space"] == ROWS - len(MISSING)
    if policy == "drop":
        assert nan["report"]["dropped_rows"] == len(MISSING)  # type: ignore[index]


def test_nan_ids_with_on_missing_error_fail_as_null_ids(tmp_path: Path) -> None:
    spec = _id_spec(tmp_path, "error")
    messages = []
    for missing in (np.nan, None):
        with pytest.raises(DataError) as err:
            _encode_ids(spec, _id_table(missing))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "found 4 rows with them" in messages[0]


def test_validate_scan_counts_nan_ids_as_missing(tmp_path: Path) -> None:
    lines = {}
    for missing, name in ((np.nan, "nan.parquet"), (None, "null.parquet")):
        pq.write_table(_id_table(missing), tmp_path / name)
        spec = _id_spec(tmp_path, "fill", name)
        # the memory line reports the RAM free right now, which moves between two scans
        lines[name] = [
            line.replace(name, "X") for line in scan_data(spec) if "available" not in line
        ]
    assert lines["nan.parquet"] == lines["null.parquet"]
    assert any("vocab: 4 missing" in line for line in lines["nan.parquet"]), lines


# ------------------------------------------------------- statistics of clipped values


def test_normalizer_statistics_are_those_of_the_clipped_column(tmp_path: Path) -> None:
    df = set_cell(frame(), "price", [5], None)
    df["price"] = df["price"].astype(float)
    df.loc[3, "price"] = 1e9  # one huge outlier
    df.loc[4, "price"] = -1e6
    df.to_parquet(tmp_path / "train.parquet", index=False)
    path = write_spec(tmp_path, "train.parquet")
    path.write_text(path.read_text().replace("  validation_fraction: 0\n", ""))
    clip = "features[2].clip={min: 5, max: 15}"
    spec = load_spec(path, [clip])
    table = pa.Table.from_pandas(df, preserve_index=False)
    in_memory = FeatureTransforms.fit(spec, table).state["numeric"]["price"]
    x = np.clip(df["price"].to_numpy(), 5, 15)
    fill = np.nanmean(x)  # the default fill: the mean of the clipped values present
    x = np.where(np.isnan(x), fill, x)
    expected = {"fill": fill, "mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()}
    assert in_memory == pytest.approx(expected, rel=1e-12)
    # the encoded column is standardized: mean 0 and std 1 exactly (up to float32)
    dense = FeatureTransforms.fit(spec, table).encode(table).dense[:, 0]
    assert abs(float(dense.mean())) < 1e-5 and abs(float(dense.std()) - 1) < 1e-5
    streamed = fit_transforms(load_spec(path, [clip, "data.streaming=true"]), read_rows=7).state[
        "numeric"
    ]["price"]
    assert streamed == pytest.approx(in_memory, rel=1e-12)
