"""Bad data: a catalogue of broken files, each with the error it must produce, and the data
policies (fill, clip, out-of-vocabulary, drop) with the counts they must report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.data.validate import scan_data
from torchrec_ple.spec import DataError, load_spec

N = 40

SPEC = """
data:
  train: {path: train.csv}
  validation_fraction: 0
features:
  - {name: user, type: categorical, embedding: {dim: 4}}
  - {name: hist, type: sequence, separator: ";", embedding: {dim: 4}}
  - {name: price, type: numeric}
  - {name: city, type: categorical, num_embeddings: 10, embedding: {dim: 4}}
tasks:
  - {name: ctr, label: click}
  - {name: cvr, label: buy, sample_space: {column: click, equals: 1}}
  - {name: watch, label: watch, type: regression}
model: {architecture: mmoe, shared_experts: 2, expert_dims: [8], tower_dims: [4]}
train: {batch_size: 8, epochs: 1, progress: false, tensorboard: false}
"""


def frame() -> pd.DataFrame:
    """40 clean rows: every column the spec reads, sample spaces non-empty."""
    rng = np.random.default_rng(0)
    click = rng.integers(0, 2, N)
    click[:2] = [0, 1]
    return pd.DataFrame(
        {
            "user": [f"u{i % 5}" for i in range(N)],
            "hist": [";".join(f"i{j}" for j in range(i % 4 + 1)) for i in range(N)],
            "price": rng.normal(10, 2, N).round(2),
            "city": rng.integers(0, 10, N),
            "click": click,
            "buy": np.where(click == 1, rng.integers(0, 2, N), np.nan),
            "watch": rng.random(N).round(3),
        }
    )


def write_spec(folder: Path, data_path: str = "train.csv", extra: str = "") -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.replace("train.csv", data_path) + extra)
    return spec


def set_cell(df: pd.DataFrame, col: str, rows: List[int], value: object) -> pd.DataFrame:
    df[col] = df[col].astype(object)
    for r in rows:
        df.at[r, col] = value
    return df


# ----------------------------------------------------------------------- the catalogue
# Each case: a writer making the bad file(s) in a folder (returning the data path the spec
# points at), --set overrides, and the substrings the one-line error must contain.
Writer = Callable[[Path], str]


def csv_of(mutate: Callable[[pd.DataFrame], pd.DataFrame]) -> Writer:
    def write(folder: Path) -> str:
        mutate(frame()).to_csv(folder / "train.csv", index=False)
        return "train.csv"

    return write


def parquet_of(mutate: Callable[[pd.DataFrame], pd.DataFrame]) -> Writer:
    def write(folder: Path) -> str:
        mutate(frame()).to_parquet(folder / "train.parquet", index=False)
        return "train.parquet"

    return write


def raw(name: str, content: bytes) -> Writer:
    def write(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return name

    return write


def truncated_parquet(folder: Path) -> str:
    frame().to_parquet(folder / "full.parquet", index=False)
    data = (folder / "full.parquet").read_bytes()
    (folder / "train.parquet").write_bytes(data[: len(data) // 2])
    return "train.parquet"


def mixed_directory(folder: Path) -> str:
    (folder / "parts").mkdir()
    frame().to_parquet(folder / "parts" / "a.parquet", index=False)
    frame().drop(columns=["price"]).to_parquet(folder / "parts" / "b.parquet", index=False)
    return "parts"


def empty_parquet(folder: Path) -> str:
    frame().head(0).to_parquet(folder / "train.parquet", index=False)
    return "train.parquet"


def list_of_ints_as_hist(folder: Path) -> str:
    df = frame()
    table = pa.Table.from_pandas(df.drop(columns=["hist"]), preserve_index=False)
    table = table.append_column("hist", pa.array(np.arange(N) % 4, pa.int64()))
    pq.write_table(table, folder / "train.parquet")
    return "train.parquet"


CASES: Dict[str, tuple[Writer, List[str], List[str]]] = {
    "missing_column": (
        csv_of(lambda d: d.rename(columns={"price": "prize"})),
        [],
        ["column 'price'", "a column named 'price'", "did you mean 'prize'"],
    ),
    "text_in_numeric_column": (
        csv_of(lambda d: set_cell(d, "price", [3], "12,50 EUR")),
        [],
        ["column 'price'", "expected numbers", "'12,50 EUR'"],
    ),
    "nan_and_inf_numeric_with_on_missing_error": (
        csv_of(lambda d: set_cell(set_cell(d, "price", [4], "inf"), "price", [7], "")),
        ["features[2].on_missing=error"],
        ["column 'price'", "no missing or non-finite values", "2 rows", "e.g. row 4"],
    ),
    "null_categorical_with_on_missing_error": (
        csv_of(lambda d: set_cell(d, "user", [5, 6], None)),
        ["features[0].on_missing=error"],
        ["column 'user'", "no missing values", "2 rows", "e.g. row 5"],
    ),
    "identity_id_out_of_range": (
        csv_of(lambda d: set_cell(d, "city", [9], 12)),
        [],
        ["column 'city'", "integer ids in [0, 10)", "1 values outside, e.g. 12", "on_out_of_range"],
    ),
    "identity_id_not_an_integer": (
        csv_of(lambda d: set_cell(d, "city", [2], 3.5)),
        [],
        ["column 'city'", "integer ids in [0, 10)", "e.g. 3.5"],
    ),
    "identity_id_missing": (
        csv_of(lambda d: set_cell(d, "city", [1], None)),
        [],
        ["column 'city'", "on every row", "1 missing values", "on_missing: drop or fill"],
    ),
    "empty_list_with_on_empty_error": (
        csv_of(lambda d: set_cell(d, "hist", [8], None)),
        ["features[1].on_empty=error"],
        ["column 'hist'", "non-empty lists", "1 empty or missing lists, e.g. row 8"],
    ),
    "binary_label_outside_0_1": (
        csv_of(lambda d: set_cell(d, "click", [0], 2)),
        [],
        ["column 'click'", "binary labels in {0, 1} for task 'ctr'", "e.g. 2", "on_invalid"],
    ),
    "text_in_regression_label": (
        csv_of(lambda d: set_cell(d, "watch", [3], "bad")),
        [],
        ["column 'watch'", "expected numbers", "'bad'"],
    ),
    "empty_sample_space_in_training_set": (
        csv_of(lambda d: d.assign(buy=np.nan)),
        [],
        ["column 'buy'", "at least one training row in task 'cvr''s sample space"],
    ),
    "header_only_csv": (
        raw("train.csv", b"user,hist,price,city,click,buy,watch\n"),
        [],
        ["train.csv", "at least one row", "an empty table"],
    ),
    "zero_byte_csv": (
        raw("train.csv", b""),
        [],
        ["train.csv", "a readable CSV file", "No columns to parse"],
    ),
    "ragged_csv_row": (
        raw(
            "train.csv",
            b"user,hist,price,city,click,buy,watch\nu1,a,1.0,2,1,0,0.5\nu2,b,2,3,0,,0.1,9,9\n",
        ),
        [],
        ["train.csv", "a readable CSV file", "line 3"],
    ),
    "zero_row_parquet": (empty_parquet, [], ["train.parquet", "at least one row"]),
    "truncated_parquet": (truncated_parquet, [], ["train.parquet", "readable Parquet data"]),
    "parquet_directory_with_a_file_lacking_a_column": (
        mixed_directory,
        [],
        ["b.parquet", "column 'price'", "the columns of the other files", "without ['price']"],
    ),
    "missing_path": (
        lambda folder: "nowhere/train.parquet",
        [],
        ["nowhere/train.parquet", "an existing file or directory", "found nothing"],
    ),
    "sequence_column_of_plain_ints": (
        list_of_ints_as_hist,
        [],
        ["column 'hist'", "a list column", "int64"],
    ),
    "drops_over_the_limit": (
        csv_of(lambda d: set_cell(d, "price", list(range(10)), None)),
        ["features[2].on_missing=drop"],
        ["at most data.max_dropped_fraction=0.1 of the rows dropped", "10 of 40 rows", "price"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_file_gives_one_clear_line(case: str, tmp_path: Path) -> None:
    writer, overrides, expected = CASES[case]
    data_path = writer(tmp_path)
    spec = load_spec(write_spec(tmp_path, data_path), overrides)
    with pytest.raises(DataError) as err:
        scan_data(spec)
    msg = str(err.value)
    assert "\n" not in msg, msg
    where = Path(data_path).name
    assert where in msg, f"the message names no file: {msg}"
    for part in expected:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_catalogue_size() -> None:
    assert len(CASES) >= 15


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchrec_ple", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_fit_and_validate_scan_report_bad_data_in_one_line(tmp_path: Path) -> None:
    csv_of(lambda d: set_cell(d, "city", [9], 12))(tmp_path)
    spec = write_spec(tmp_path)
    for args in (["validate", str(spec), "--scan"], ["fit", str(spec), "--out", "run"]):
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr + r.stdout, r.stderr
        assert "train.csv: column 'city': expected integer ids in [0, 10)" in lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------------- policies


def _encode(df: pd.DataFrame, tmp_path: Path, overrides: List[str], dropped: str = "remove"):
    df.to_csv(tmp_path / "train.csv", index=False)
    spec = load_spec(write_spec(tmp_path), overrides)
    table = pa.Table.from_pandas(df, preserve_index=False)
    transforms = FeatureTransforms.fit(spec, table)
    return spec, transforms.encode(table, dropped=dropped)


def test_fill_and_clip_are_counted(tmp_path: Path) -> None:
    df = set_cell(frame(), "price", [1, 2], None)
    df.loc[3, "price"] = 1e6
    df.loc[4, "price"] = -50.0
    _, enc = _encode(df, tmp_path, ["features[2].clip={min: 0, max: 100}"])
    rep = enc.report["features"]["price"]
    assert rep == {"missing_or_nonfinite_filled": 2, "clipped": 2}
    assert enc.num_rows == N and enc.report["dropped_rows"] == 0


def test_missing_and_unseen_categoricals_go_to_row_0(tmp_path: Path) -> None:
    df = set_cell(frame(), "user", [0, 1], None)
    spec, enc = _encode(df, tmp_path, [])
    table = pa.table({c: df[c] for c in df.columns}).slice(0, 4)
    table = table.set_column(0, "user", pa.array([None, "u1", "never-seen", "u2"]))
    new = FeatureTransforms.fit(spec, pa.Table.from_pandas(df, preserve_index=False)).encode(table)
    assert new.values[0].tolist()[0] == 0 and new.values[0].tolist()[2] == 0
    assert new.report["features"]["user"] == {"missing": 1, "out_of_vocabulary": 1}
    assert enc.report["features"]["user"]["missing"] == 2


def test_drop_policies_remove_rows_and_count_them(tmp_path: Path) -> None:
    df = frame()
    df = set_cell(df, "price", [3], None)
    df = set_cell(df, "city", [5, 6], 99)
    df = set_cell(df, "hist", [7], None)
    overrides = [
        "features[2].on_missing=drop",
        "features[3].on_out_of_range=drop",
        "features[1].on_empty=drop",
    ]
    _, enc = _encode(df, tmp_path, overrides)
    assert enc.num_rows == N - 4
    assert enc.report["dropped_rows"] == 4
    assert enc.report["dropped"] == {"hist: empty": 1, "city: out of range": 2, "price: missing": 1}
    # the kept rows are the others, in order: their prices survive unchanged
    kept = np.delete(np.arange(N), [3, 5, 6, 7])
    _, clean = _encode(frame(), tmp_path, [])
    assert enc.labels[:, 0].tolist() == clean.labels[kept, 0].tolist()
    assert enc.values[2].tolist() == clean.values[2][kept].tolist()
    assert enc.offsets[1] is not None and enc.offsets[1][-1] == len(enc.values[1])


def test_mask_mode_keeps_rows_out_of_every_sample_space(tmp_path: Path) -> None:
    df = set_cell(frame(), "price", [3], None)
    _, enc = _encode(df, tmp_path, ["features[2].on_missing=drop"], dropped="mask")
    assert enc.num_rows == N and enc.masks[3].tolist() == [0.0, 0.0, 0.0]
    assert enc.report["dropped_rows"] == 1


def test_identity_clip_and_fill(tmp_path: Path) -> None:
    df = set_cell(frame(), "city", [0, 1, 2], None)
    df.loc[0, "city"], df.loc[1, "city"] = 15, -2
    _, clipped = _encode(
        df,
        tmp_path,
        ["features[3].on_out_of_range=clip", "features[3].on_missing=fill", "features[3].fill=0"],
    )
    assert clipped.values[2][:3].tolist() == [9, 0, 0]
    assert clipped.report["features"]["city"] == {"missing": 1, "out_of_range": 2}
    _, filled = _encode(
        df,
        tmp_path,
        ["features[3].on_out_of_range=fill", "features[3].on_missing=fill", "features[3].fill=7"],
    )
    assert filled.values[2][:3].tolist() == [7, 7, 7]


def test_empty_lists_oov_gets_one_id_0(tmp_path: Path) -> None:
    df = set_cell(frame(), "hist", [0, 2], None)
    _, enc = _encode(df, tmp_path, ["features[1].on_empty=oov"])
    offs, vals = enc.offsets[1], enc.values[1]
    assert offs is not None
    assert np.diff(offs)[[0, 2]].tolist() == [1, 1] and vals[offs[0]] == 0 and vals[offs[2]] == 0
    assert enc.report["features"]["hist"]["empty_lists"] == 2


def test_invalid_binary_label_drop_leaves_only_that_task(tmp_path: Path) -> None:
    df = set_cell(frame(), "click", [0], 5)
    _, enc = _encode(df, tmp_path, ["tasks[0].on_invalid=drop"])
    assert enc.num_rows == N
    assert enc.masks[0, 0] == 0 and enc.masks[0, 2] == 1  # ctr out, watch kept
    assert enc.report["tasks"]["ctr"]["label_invalid_dropped"] == 1


def test_fit_reports_policy_counts_in_metrics_and_log(tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import fit

    df = set_cell(frame(), "price", [3], None)
    df = set_cell(df, "city", [5], 99)
    df.loc[6, "price"] = 1e5
    df.to_csv(tmp_path / "train.csv", index=False)
    spec = load_spec(
        write_spec(tmp_path),
        [
            "features[2].clip={max: 1000}",
            "features[3].on_out_of_range=drop",
            "data.validation_fraction=0.25",
        ],
    )
    lines: List[str] = []
    fit(spec, tmp_path / "run", log=lines.append)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    data = metrics["data"]
    total_dropped = data["train"]["dropped_rows"] + data["validation"]["dropped_rows"]
    total_filled = sum(
        data[s]["features"]["price"]["missing_or_nonfinite_filled"] for s in ("train", "validation")
    )
    total_clipped = sum(data[s]["features"]["price"]["clipped"] for s in ("train", "validation"))
    assert (total_dropped, total_filled, total_clipped) == (1, 1, 1)
    text = "\n".join(lines)
    assert "rows dropped (city: out of range 1)" in text
    assert "price: 1 filled" in text or "price: 1 clipped" in text


def test_predict_scores_every_row_even_those_training_drops(tmp_path: Path) -> None:
    from torchrec_ple.serving.predict import load_scorer
    from torchrec_ple.train.trainer import fit

    frame().to_csv(tmp_path / "train.csv", index=False)
    spec = load_spec(write_spec(tmp_path), ["features[3].on_out_of_range=drop"])
    fit(spec, tmp_path / "run", log=lambda s: None)
    scorer = load_scorer(tmp_path / "run")
    df = set_cell(frame(), "city", [0], 99)
    scores = scorer.score_table(pa.Table.from_pandas(df, preserve_index=False))
    assert scores.shape == (N, 3) and np.isfinite(scores).all()
    assert scorer.last_report["dropped"] == {"city: out of range": 1}


def test_streaming_drop_masks_rows_and_counts_them_per_epoch(tmp_path: Path) -> None:
    from torchrec_ple.data.streaming import fit_transforms, streaming_loader

    df = set_cell(frame(), "price", [3, 11], None)
    df["price"] = df["price"].astype(float)
    df.to_parquet(tmp_path / "train.parquet", index=False)
    path = write_spec(tmp_path, "train.parquet")
    path.write_text(path.read_text().replace("  validation_fraction: 0\n", ""))
    spec = load_spec(path, ["features[2].on_missing=drop", "data.streaming=true"])
    loader = streaming_loader(spec, fit_transforms(spec), "train")
    loader.set_epoch(0)
    batches = list(loader)
    masks = np.concatenate([b.masks.numpy() for b in batches])
    # 40 real rows in 5 batches of 8: the 2 dropped rows stay, out of every sample space
    assert masks.shape == (N, 3)
    assert int((masks[:, 2] == 0).sum()) == 2  # 'watch' has every other row
    encoded = loader.report["encoded"]
    assert encoded["rows"] == N and encoded["dropped_rows"] == 2
    assert encoded["dropped"] == {"price: missing": 2}
