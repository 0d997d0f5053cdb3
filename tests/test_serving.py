"""Serving: DCP checkpoint -> unsharded model -> torch.export folder -> scores of files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ADULT, ROOT
from torchrec_ple.data.sources import load_tables
from torchrec_ple.serving.export import (
    check_no_pickle,
    export_model,
    load_exported,
    load_unsharded,
)
from torchrec_ple.serving.predict import Scorer, load_scorer, predict_file, predict_table
from torchrec_ple.spec import DataError, load_spec
from torchrec_ple.train.checkpoint import load_checkpoint
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.trainer import build_state, fit, predict_encoded, resolve_checkpoint

TASKS = ["income", "never_married"]


def _head(src: Path, dst: Path, rows: int) -> Path:
    # A small slice of the bundled sample keeps this module well under a minute.
    lines = src.read_text().splitlines(keepends=True)
    dst.write_text("".join(lines[:rows]))
    return dst


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """(spec, run dir, model dir) of a 1-epoch adult run and its export."""
    tmp = tmp_path_factory.mktemp("serving")
    train = _head(ADULT / "adult_sample.data", tmp / "train.data", 1500)
    valid = _head(ADULT / "adult_sample.test", tmp / "valid.test", 600)
    spec = load_spec(
        ROOT / "feature_specs" / "adult.yaml",
        [
            f"data.train.path={train}",
            f"data.validation.path={valid}",
            "train.epochs=1",
            "train.progress=false",
            "model.expert_dims=[16]",
            "model.tower_dims=[8]",
        ],
    )
    out = tmp / "run"
    fit(spec, out, log=lambda s: None)
    model_dir = export_model(None, out, tmp / "model")
    return spec, out, model_dir


@pytest.fixture(scope="module")
def valid_table(run) -> pa.Table:
    spec, _, _ = run
    return load_tables(spec)[1]


@pytest.fixture(scope="module")
def scorers(run) -> Dict[str, Scorer]:
    """The run's model in process ("run") and its exported program ("export")."""
    spec, run_dir, model_dir = run
    return {"run": load_scorer(run_dir, spec), "export": load_scorer(model_dir)}


def test_export_folder_contents(run) -> None:
    spec, _, model_dir = run
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["manifest.json", "model.pt2", "spec.yaml", "transforms.json"]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["kind"] == "torch.export" and manifest["fallback_reason"] is None
    assert manifest["inputs"]["lengths"]["keys"] == [f.name for f in spec.sparse_features]
    assert manifest["inputs"]["dense"]["features"] == [f.name for f in spec.dense_features]
    assert [(t["name"], t["output"]) for t in manifest["outputs"]["tasks"]] == [
        ("income", "probability"),
        ("never_married", "probability"),
    ]


def test_exported_equals_in_process_and_evaluate_path(run, scorers, valid_table: pa.Table) -> None:
    spec, run_dir, _ = run
    in_process, exported = scorers["run"], scorers["export"]
    assert (in_process.source, exported.source) == ("run", "export")
    a = in_process.score_table(valid_table, batch_size=256)
    b = exported.score_table(valid_table, batch_size=100)
    assert a.shape == (valid_table.num_rows, 2)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert ((a > 0) & (a < 1)).all()  # binary tasks: probabilities

    # The trainer's evaluate path: the DMP-sharded model over the same encoded rows.
    ctx = init_distributed()
    ckpt, _ = resolve_checkpoint(run_dir)
    state = build_state(spec, in_process.transforms, ctx)
    load_checkpoint(ckpt, state.model)
    outputs = predict_encoded(state, in_process.transforms.encode(valid_table), 512)["outputs"]
    np.testing.assert_allclose(b, torch.sigmoid(outputs).numpy(), rtol=1e-5, atol=1e-5)


def test_unsharded_model_matches_checkpoint(run) -> None:
    spec, run_dir, _ = run
    model, transforms = load_unsharded(spec, run_dir)
    assert not model.training
    assert [t.name for t in transforms.tables()] == [f.name for f in spec.sparse_features]


def test_dynamic_batch_sizes(scorers, valid_table: pa.Table) -> None:
    exported = scorers["export"]
    one = exported.score_table(valid_table.slice(0, 1))
    many = exported.score_table(valid_table.slice(0, 7))
    np.testing.assert_allclose(one[0], many[0], rtol=1e-5, atol=1e-6)


def test_load_needs_no_pickle(run, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, model_dir = run
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return real_load(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading the exported model")

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", forbidden, raising=False)
    model = load_exported(model_dir)
    dense = torch.zeros(2, len(model.manifest["inputs"]["dense"]["features"]))
    keys = model.manifest["inputs"]["lengths"]["keys"]
    out = model(
        dense,
        torch.zeros(2 * len(keys), dtype=torch.int64),
        torch.ones(len(keys), 2, dtype=torch.int64),
    )
    assert out.shape == (2, 2)


def test_pickled_payload_is_refused(run, tmp_path: Path) -> None:
    _, _, model_dir = run
    bad = tmp_path / "model.pt2"
    with zipfile.ZipFile(model_dir / "model.pt2") as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(DataError, match="pickled payload"):
        check_no_pickle(bad)


def test_predict_parquet_without_labels(scorers, valid_table: pa.Table, tmp_path: Path) -> None:
    n = valid_table.num_rows
    rows = valid_table.drop_columns(["income", "marital_status"])
    rows = rows.append_column("row_id", pa.array(np.arange(n) * 10))
    pq.write_table(rows, tmp_path / "in.parquet", row_group_size=250)
    outs = {}
    for name, scorer in scorers.items():
        info = predict_file(
            None,
            scorer,
            tmp_path / "in.parquet",
            tmp_path / f"{name}.parquet",
            batch_size=128,
            keep_columns=["row_id"],
        )
        assert info == {
            "rows": n,
            "columns": ["row_id", *TASKS],
            "output": str(tmp_path / f"{name}.parquet"),
            "source": name,
        }
        outs[name] = pq.read_table(tmp_path / f"{name}.parquet")
        assert outs[name].column_names == ["row_id", *TASKS]
        assert outs[name].schema.field("income").type == pa.float32()
        assert outs[name]["row_id"].to_pylist() == list(np.arange(n) * 10)
    for t in TASKS:
        np.testing.assert_allclose(
            outs["export"][t].to_numpy(), outs["run"][t].to_numpy(), rtol=1e-5, atol=1e-5
        )
    # Same scores as scoring the labelled table directly.
    direct = scorers["export"].score_table(valid_table)
    np.testing.assert_allclose(
        outs["export"]["income"].to_numpy(), direct[:, 0], rtol=1e-5, atol=1e-6
    )


def test_predict_csv_uses_spec_csv_options(run, tmp_path: Path) -> None:
    spec, _, model_dir = run  # from the folder: loads the program itself
    info = predict_file(
        spec, model_dir, spec.data.validation.path, tmp_path / "o.parquet", batch_size=256
    )
    assert info["rows"] == 599  # 600 lines, the first a "|1x3 Cross validator" comment
    assert pq.read_table(tmp_path / "o.parquet").column_names == TASKS


def test_predict_table_name_clash_needs_prefix(scorers, valid_table: pa.Table) -> None:
    scorer = scorers["export"]
    with pytest.raises(DataError, match="prefix"):
        predict_table(scorer, valid_table, keep_columns=["income"])
    out = predict_table(scorer, valid_table, keep_columns=["income"], prefix="p_")
    assert out.column_names == ["income", "p_income", "p_never_married"]


def test_missing_feature_column_is_a_data_error(
    scorers, valid_table: pa.Table, tmp_path: Path
) -> None:
    pq.write_table(valid_table.drop_columns(["education"]), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="education"):
        predict_file(None, scorers["export"], tmp_path / "x.parquet", tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_stale_checkpoint_is_refused(run, tmp_path: Path) -> None:
    # A checkpoint older than transforms.json was left by an earlier fit into the folder.
    _, run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    future = (copy / "transforms.json").stat().st_mtime + 60
    os.utime(copy / "transforms.json", (future, future))
    with pytest.raises(DataError, match="earlier fit"):
        load_unsharded(None, copy)
