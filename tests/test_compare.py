"""``torchrec-ple compare``: tiny real comparisons, sweeps, failures and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.conftest import ROOT
from torchrec_ple.cli import main
from torchrec_ple.spec import SpecError
from torchrec_ple.train import compare as cmp
from torchrec_ple.train import plots

SEESAW = ROOT / "feature_specs" / "synthetic_seesaw.yaml"
TINY = [
    "data.synthetic.train_rows=1500",
    "data.synthetic.validation_rows=500",
    "train.epochs=1",
    "model.expert_dims=[8]",
    "model.tower_dims=[4]",
]
PNG = b"\x89PNG\r\n\x1a\n"


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_compare_cli_writes_json_md_png(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    rc = main(
        ["compare", str(SEESAW), "--architectures", "single_task,shared_bottom,ple"]
        + ["--seeds", "2", "--out", str(out), "--drop-checkpoints"]
        + _sets(TINY)
    )
    assert rc == 0
    res = json.loads((out / "compare.json").read_text())
    assert list(res["architectures"]) == ["single_task", "shared_bottom", "ple"]
    assert res["train_seeds"] == [0, 1] and res["failed_runs"] == 0
    for arch, e in res["architectures"].items():
        assert e["status"] == "ok" and e["parameters"] > 0 and e["samples_per_second"] > 0
        assert [r["train_seed"] for r in e["runs"]] == [0, 1]
        for task in ("y1", "y2"):
            s = e["tasks"][task]
            assert s["metric"] == "mse" and len(s["values"]) == 2
            assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
            assert "gain" in s
        assert (out / arch / "seed1" / "metrics.json").is_file()
        assert not (out / arch / "seed1" / "checkpoints").exists()
    assert str(res["architectures"]["single_task"]["tasks"]["y1"]["gain"]) == "0.0"
    st, sb = (res["architectures"][a]["tasks"]["y2"] for a in ("single_task", "shared_bottom"))
    assert sb["gain"] == pytest.approx(st["mean"] - sb["mean"])  # MSE: sign flipped
    md = (out / "compare.md").read_text()
    assert "| ple |" in md and "y1 gain" in md and "Non-negative MTL gain on every task" in md
    assert (out / "seesaw.png").read_bytes().startswith(PNG)
    if res["architectures"]["ple"].get("gates"):  # the trainer reports gate means
        assert (out / "ple_gates.png").read_bytes().startswith(PNG)


def test_sweep_writes_table_per_value(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    res = cmp.run_sweep(
        SEESAW,
        ["single_task", "cgc"],
        out,
        TINY,
        [cmp.parse_sweep("data.synthetic.correlation=0.5,1.0")],
        seeds=1,
        log=lambda s: None,
    )
    labels = [p["label"] for p in res["points"]]
    assert labels == ["data.synthetic.correlation=0.5", "data.synthetic.correlation=1.0"]
    for label in labels:
        assert (out / label / "compare.json").is_file() and (out / label / "seesaw.png").is_file()
    on_disk = json.loads((out / "sweep.json").read_text())
    assert on_disk["sweep"] == {"data.synthetic.correlation": [0.5, 1.0]}
    gains = on_disk["points"][1]["compare"]["architectures"]["cgc"]["tasks"]["y1"]
    assert gains["mean"] > 0 and gains["gain"] is not None
    md = (out / "sweep.md").read_text()
    assert md.count("| cgc |") == 2 and "data.synthetic.correlation" in md


def test_failed_spec_for_one_architecture_is_recorded(tmp_path: Path) -> None:
    # ple with 2 levels needs a shared expert; single_task and cgc do not.
    res = cmp.compare(
        SEESAW,
        ["single_task", "cgc", "ple"],
        tmp_path,
        TINY + ["model.shared_experts=0"],
        seeds=1,
        log=lambda s: None,
    )
    ple = res["architectures"]["ple"]
    assert ple["status"] == "failed" and "shared_experts" in ple["errors"][0]["error"]
    assert res["architectures"]["cgc"]["status"] == "ok" and res["failed_runs"] == 1
    assert res["architectures"]["cgc"]["tasks"]["y1"]["gain"] is not None
    md = (tmp_path / "compare.md").read_text()
    assert "ple (failed)" in md and "## Failed runs" in md


def _fake_metrics(arch: str, seed: int, tasks: Dict[str, str]) -> Dict[str, Any]:
    base = 0.1 * (1 + len(arch) % 3) + 0.01 * seed
    m: Dict[str, Any] = {
        "tasks": {
            t: ({"auc": 0.7 + base, "count": 10} if k == "binary" else {"mse": base, "count": 10})
            for t, k in tasks.items()
        },
        "train": {"samples_per_second": 100.0},
        "model": {"parameters": 42},
    }
    if arch == "ple":
        m["gates"] = {
            "level0/a": {"experts": ["a/0", "shared/0"], "mean": [0.3, 0.7]},
            "level0/shared": {"experts": ["a/0", "b/0", "shared/0"], "mean": [0.2, 0.3, 0.5]},
        }
    return m


def test_runtime_failure_gates_and_no_single_task(tmp_path: Path, monkeypatch) -> None:
    def fake_fit(spec, out_dir, log=print, **kwargs):
        if spec.model.architecture == "mmoe" and spec.train.seed == 1:
            raise RuntimeError("boom")
        tasks = {t.name: t.type for t in spec.tasks}
        return _fake_metrics(spec.model.architecture, spec.train.seed, tasks)

    from torchrec_ple.train import trainer

    monkeypatch.setattr(trainer, "fit", fake_fit)
    res = cmp.compare(SEESAW, ["mmoe", "ple"], tmp_path, TINY, seeds=2, log=lambda s: None)
    mmoe = res["architectures"]["mmoe"]
    assert mmoe["status"] == "partial" and mmoe["errors"] == [
        {"seed": 1, "error": "RuntimeError: boom"}
    ]
    assert mmoe["tasks"]["y1"]["n"] == 1 and mmoe["tasks"]["y1"]["values"][1] is None
    assert "model.shared_experts=3" in mmoe["overrides"]  # as many experts as ple's level
    assert not res["gains"] and res["architectures"]["ple"]["tasks"]["y1"]["gain"] is None
    md = (tmp_path / "compare.md").read_text()
    assert "MTL gains omitted: single_task is not among" in md and "RuntimeError: boom" in md
    assert (tmp_path / "ple_gates.png").read_bytes().startswith(PNG)
    assert (tmp_path / "seesaw.png").read_bytes().startswith(PNG)


def test_heatmap_for_three_tasks(tmp_path: Path) -> None:
    tasks = {"a": "binary", "b": "binary", "c": "regression"}
    result: Dict[str, Any] = {
        "tasks": {
            n: {"type": k, "metric": cmp._primary(k)[0], "higher_is_better": cmp._primary(k)[1]}
            for n, k in tasks.items()
        },
        "architectures": {},
        "seeds": 1,
    }
    for arch in ("single_task", "mmoe", "ple"):
        e: Dict[str, Any] = {"runs": [{"seed": 0, **_fake_metrics(arch, 0, tasks)}], "errors": []}
        cmp._summarize_arch(e, result["tasks"])
        result["architectures"][arch] = e
    cmp._add_gains(result)
    assert result["architectures"]["ple"]["tasks"]["c"]["gain"] == pytest.approx(0.2)
    assert result["architectures"]["ple"]["tasks"]["a"]["gain"] == pytest.approx(-0.2)
    assert plots.plot_seesaw(result, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes().startswith(PNG)


def test_argument_parsing() -> None:
    assert (
        cmp.parse_architectures("all")[0] == "single_task"
        and len(cmp.parse_architectures("all")) == 10
    )
    with pytest.raises(SpecError, match="did you mean 'mmoe'"):
        cmp.parse_architectures("single_task,mmoee")
    assert cmp.parse_sweep("model.expert_dims=[32,16],[8]") == (
        "model.expert_dims",
        [[32, 16], [8]],
    )
    assert cmp.parse_sweep("tasks[1].weight.decay=1.0,0.999") == (
        "tasks[1].weight.decay",
        [1.0, 0.999],
    )
    assert cmp._label([("tasks[1].weight.decay", 0.999)]) == "tasks_1.weight.decay=0.999"
    with pytest.raises(SpecError):
        cmp.parse_sweep("model.levels")
