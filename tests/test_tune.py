"""``torchrec-ple tune``: the spec's ``tune:`` block, real tiny studies on the Adult sample,
pruning, kill-and-resume with parallel workers, the reports and ``compare --from-tune``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from tests.conftest import ADULT, ROOT
from torchrec_ple.cli import main
from torchrec_ple.spec import SpecError, load_spec

optuna = pytest.importorskip("optuna")

from torchrec_ple.spec.schema import TunePruneSpec  # noqa: E402
from torchrec_ple.train import tune_space  # noqa: E402
from torchrec_ple.train.checkpoint import latest_checkpoint  # noqa: E402
from torchrec_ple.train.tune_worker import Pruner  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
# Tiny trials: small towers, 1-2 epochs of the 6,000-row sample (about 2 s each).
TINY_TUNE = """
tune:
  trials: 3
  startup_trials: 2
  params:
    - {key: train.dense_optimizer.lr, low: 1.0e-3, high: 2.0e-2, log: true}
    - {key: train.epochs, low: 1, high: 2}
    - {key: model.expert_dims, choices: [[8], [16, 8]]}
  prune: {warmup_epochs: 1, min_trials: 2}
"""


def _spec(tmp_path: Path, tune_block: str, name: str = "spec.yaml", **train: Any) -> Path:
    """adult.yaml on the bundled sample (absolute paths), with its tune block replaced."""
    text = (ROOT / "feature_specs" / "adult.yaml").read_text()
    text = text[: text.index("# `torchrec-ple tune`")]
    text = text.replace("path: adult.data", f"path: {ADULT / 'adult_sample.data'}")
    text = text.replace("path: adult.test", f"path: {ADULT / 'adult_sample.test'}")
    text = text.replace("tower_dims: [32]", "tower_dims: [4]")
    text = text.replace("expert_dims: [64, 32]", "expert_dims: [16]")
    text = text.replace("batch_size: 256", "batch_size: 512")
    for key, value in train.items():  # replace the train: key, or add it
        line = next((x for x in text.splitlines() if x.startswith(f"  {key}:")), None)
        text = (
            text.replace(line, f"  {key}: {value}")
            if line
            else text.replace("  seed: 0\n", f"  seed: 0\n  {key}: {value}\n")
        )
    path = tmp_path / name
    path.write_text(text + tune_block)
    return path


def _studies(out: Path) -> Dict[str, Any]:
    storage = f"sqlite:///{out / 'study.db'}"
    return {
        n.split(".", 1)[1]: optuna.load_study(study_name=n, storage=storage)
        for n in optuna.get_all_study_names(storage)
    }


# ----------------------------------------------------------------------- the tune: block


def test_fit_specs_accept_the_tune_block() -> None:
    spec = load_spec(ROOT / "feature_specs" / "adult.yaml")
    assert spec.tune is not None and spec.tune.architectures == ["ple", "mmoe", "shared_bottom"]
    lr = spec.tune.params[0]
    assert lr.key == "train.dense_optimizer.lr" and lr.log
    assert lr.low == pytest.approx(5e-4)  # YAML 1.1 reads `5.0e-4` as text: a number here
    assert spec.model.architecture == "ple" and spec.train.epochs == 5  # fit's values as before
    no_block = load_spec(ROOT / "feature_specs" / "synthetic.yaml")
    assert no_block.tune is None


@pytest.mark.parametrize(
    "block, where, says",
    [
        (
            "  params:\n    - {key: train.dense_optimzer.lr, low: 1.0e-3, high: 1.0e-2}\n",
            "tune.params[0].key",
            "found 'dense_optimzer' (did you mean 'dense_optimizer'?)",
        ),
        (
            "  params:\n    - {key: train.epochs, low: 5, high: 2}\n",
            "tune.params[0].high",
            "expected a number > low (5), found 2",
        ),
        (
            "  params:\n    - {key: train.dense_optimizer.lr, low: 0, high: 0.1, log: true}\n",
            "tune.params[0].low",
            "expected a number > 0 (log: true)",
        ),
        (
            "  architectures: [cgc, mmoe]\n  params:\n"
            "    - {key: model.shared_experts, choices: [1, 0]}\n",
            "tune.params[0].choices[1]",
            "a value the spec accepts for mmoe, found 0 (model.shared_experts: expected "
            "shared_experts >= 1",
        ),
        (
            "  params:\n    - {key: 'tasks[1].weight.decay', choices: [1.0, 1.5]}\n",
            "tune.params[0].choices[1]",
            "found 1.5 (tasks[1].weight.decay: expected a number in (0, 1]",
        ),
        (
            "  params:\n    - {key: train.epochs, low: 1, high: 2}\n"
            "    - {key: train.epochs, choices: [3]}\n",
            "tune.params[1].key",
            "expected each key once",
        ),
        (
            "  objectives: {income: mse}\n  params:\n    - {key: train.epochs, low: 1, high: 2}\n",
            "tune.objectives.income",
            "expected one of auc, ne",
        ),
        (
            "  params:\n    - {key: model.architecture, choices: [ple, mmoe]}\n",
            "tune.params[0].key",
            "list architectures in tune.architectures",
        ),
        ("  params: []\n", "tune.params", "expected at least one key path to search"),
    ],
)
def test_bad_tune_block_is_one_located_line(
    tmp_path: Path, block: str, where: str, says: str
) -> None:
    path = _spec(tmp_path, "tune:\n" + block)
    line = len(path.read_text().splitlines()) - block.count("\n")  # the block's first line
    with pytest.raises(SpecError) as e:
        load_spec(path)
    text = str(e.value)
    assert "\n" not in text and f"{path}:" in text and where in text and says in text, text
    assert int(text.split(":")[1]) > line  # located inside the block


def test_trial_spec_is_the_spec_with_sampled_values_as_set(tmp_path: Path) -> None:
    path = _spec(tmp_path, TINY_TUNE)
    base = tune_space.base_spec(path, [])
    sampled = [("train.dense_optimizer.lr", 0.004), ("model.expert_dims", [16, 8])]
    spec = tune_space.trial_spec(path, [], base, "mmoe", sampled)
    assert spec.tune is None and "tune" not in spec.raw  # fit's folder gets a clean spec
    assert spec.train.dense_optimizer.lr == 0.004 and spec.model.expert_dims == [16, 8]
    assert spec.model.architecture == "mmoe" and spec.model.shared_experts == 3  # compare's
    assert spec.train.select is not None and spec.train.select.weights == {
        "income": 1.0,
        "never_married": 1.0,
    }
    assert [o.label for o in tune_space.objectives(base)] == ["income auc", "never_married auc"]
    with pytest.raises(SpecError, match="expected a tune: block"):
        tune_space.base_spec(ROOT / "feature_specs" / "synthetic.yaml", [])


# ----------------------------------------------------------------------------- pruning


def test_pruner_stops_a_trial_dominated_by_the_median(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, TINY_TUNE), ["train.select={weights: {income: 1}}"])
    objs = tune_space.objectives(spec)
    study = optuna.create_study(directions=["maximize", "maximize"])
    for a, b in ((0.85, 0.95), (0.86, 0.96), (0.87, 0.97)):  # completed trials' curves
        study.add_trial(
            optuna.trial.create_trial(
                values=[a, b], user_attrs={"curve": [[a - 0.01, b - 0.01], [a, b]]}
            )
        )

    def history(*points: tuple) -> List[Dict[str, Any]]:
        return [
            {"epoch": i, "validation": {"income": {"auc": a}, "never_married": {"auc": b}}}
            for i, (a, b) in enumerate(points)
        ]

    prune = TunePruneSpec(warmup_epochs=1, min_trials=3)
    trial = study.ask()
    p = Pruner(study, trial, spec, objs, prune)
    assert p(0, history((0.10, 0.10))) is None  # warmup: epoch 0 never stops
    # epoch 1: best so far (by select: income) is worse than the median on both tasks
    reason = p(1, history((0.10, 0.10), (0.80, 0.90)))
    assert reason and "worse on every objective than the median of 3" in reason
    assert p.pruned_at == 1 and trial.user_attrs["curve"][-1] == [0.80, 0.90]
    other = Pruner(study, study.ask(), spec, objs, prune)
    assert other(1, history((0.5, 0.5), (0.80, 0.99))) is None  # better on one task: kept
    few = Pruner(study, study.ask(), spec, objs, TunePruneSpec(warmup_epochs=1, min_trials=4))
    assert few(1, history((0.5, 0.5), (0.1, 0.1))) is None  # too few completed trials


def test_fit_stops_when_on_epoch_end_says_so(tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import fit

    spec = load_spec(_spec(tmp_path, "", epochs=3), ["train.progress=false"])
    seen: List[int] = []

    def stop_after_first(epoch: int, history: List[Dict[str, Any]]) -> Any:
        seen.append(len(history))
        return "enough" if epoch == 0 else None

    metrics = fit(spec, tmp_path / "run", log=lambda s: None, on_epoch_end=stop_after_first)
    assert seen == [1] and len(metrics["history"]) == 1
    assert metrics["train"]["early_stopped"]["reason"] == "enough"


# ---------------------------------------------------------------------- a real study


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A real two-architecture study on the Adult sample (3 tiny trials each)."""
    tmp = tmp_path_factory.mktemp("tune")
    spec = _spec(tmp, TINY_TUNE)
    out = tmp / "tune"
    args = ["tune", str(spec), "--out", str(out), "--architectures", "ple,shared_bottom"]
    t0 = time.perf_counter()
    rc = main(args)
    return {"rc": rc, "spec": spec, "out": out, "args": args, "s": time.perf_counter() - t0}


def test_tune_writes_fronts_reports_and_runnable_best(tuned: Dict[str, Any]) -> None:
    out = tuned["out"]
    assert tuned["rc"] == 0
    result = json.loads((out / "tune.json").read_text())
    assert list(result["architectures"]) == ["ple", "shared_bottom"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [(r["architecture"], r["trial"]) for r in rows] == [
        (a, str(n)) for a in ("ple", "shared_bottom") for n in range(3)
    ]
    for r in rows:  # each trial: a normal run folder, scored at its best epoch
        assert r["state"] in ("COMPLETE", "PRUNED"), r
        metrics = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        best = metrics["best"]
        assert float(r["income_auc"]) == pytest.approx(best["tasks"]["income"]["auc"])
        assert int(r["best_epoch"]) == best["epoch"]
        saved = yaml.safe_load((out / r["run_dir"] / "spec.yaml").read_text())
        assert saved["train"]["dense_optimizer"]["lr"] == pytest.approx(
            float(r["train.dense_optimizer.lr"]), rel=1e-5
        )
        assert "tune" not in saved
    for arch, e in result["architectures"].items():
        assert e["front"] and e["chosen"] in e["front"]
        front = [r for r in rows if r["architecture"] == arch and r["pareto"] == "True"]
        for f in front:  # no completed trial of the architecture dominates a front trial
            for r in rows:
                if r["architecture"] == arch and r["state"] == "COMPLETE":
                    a, b = float(r["income_auc"]), float(r["never_married_auc"])
                    fa, fb = float(f["income_auc"]), float(f["never_married_auc"])
                    assert not (a >= fa and b >= fb and (a > fa or b > fb))
        assert (out / "best" / f"{arch}.yaml").is_file()
    chosen = result["chosen"]
    best_spec = load_spec(out / "best.yaml")  # runnable by fit as it is
    assert best_spec.tune is None and best_spec.model.architecture == chosen["architecture"]
    md = (out / "tune.md").read_text()
    assert "## Pareto fronts" in md and "Best trial per architecture and task" in md
    assert "ple: best income auc" in md and "![Pareto fronts](pareto.png)" in md
    assert (out / "pareto.png").read_bytes().startswith(PNG)


def test_rerun_continues_the_study_and_refuses_another_spec(
    tuned: Dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    out, spec = tuned["out"], tuned["spec"]
    before = {a: [t.number for t in s.trials] for a, s in _studies(out).items()}
    assert main(tuned["args"] + ["--trials", "4", "--architectures", "ple"]) == 0
    after = _studies(out)
    assert [t.number for t in after["ple"].trials] == before["ple"] + [3]  # one more, same study
    assert [t.number for t in after["shared_bottom"].trials] == before["shared_bottom"]
    capsys.readouterr()
    rc = main(tuned["args"] + ["--set", "model.levels=1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err
    assert "tune_spec.yaml" in err and "model.levels: run has 2, spec has 1" in err
    # a folder holding something else is refused, in one line, before any work
    other = spec.parent / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc = main(["tune", str(spec), "--out", str(other)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "other files: notes.txt" in err and "\n" not in err
    assert (other / "notes.txt").read_text() == "mine"


def test_compare_from_tune_reruns_chosen_specs_over_seeds(tuned: Dict[str, Any]) -> None:
    out = tuned["out"]
    cmp_out = out.parent / "cmp"
    rc = main(
        ["compare", str(tuned["spec"]), "--from-tune", str(out), "--seeds", "2"]
        + ["--architectures", "single_task,ple", "--out", str(cmp_out), "--drop-checkpoints"]
    )
    assert rc == 0
    res = json.loads((cmp_out / "compare.json").read_text())
    assert res["from_tune"] == {"ple": str(out / "best" / "ple.yaml")}
    chosen = yaml.safe_load((out / "best" / "ple.yaml").read_text())
    for s in (0, 1):
        ran = yaml.safe_load((cmp_out / "ple" / f"seed{s}" / "spec.yaml").read_text())
        assert ran["train"]["dense_optimizer"] == chosen["train"]["dense_optimizer"]
        assert ran["train"]["seed"] == s
    ple = res["architectures"]["ple"]["tasks"]["income"]
    assert ple["n"] == 2 and ple["std"] >= 0 and ple["gain"] is not None
    assert "Tuned specs (`--from-tune`" in (cmp_out / "compare.md").read_text()


# ------------------------------------------------------------------- kill and resume


def _wait(cond: Any, timeout: float, what: str) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_killed_parallel_tune_resumes_the_same_study(tmp_path: Path) -> None:
    block = (
        "tune:\n  trials: 3\n  prune: null\n  params:\n"
        "    - {key: train.dense_optimizer.lr, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    )
    spec = _spec(tmp_path, block, epochs=5)
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "torchrec_ple", "tune", str(spec), "--out", str(out)]
    proc = subprocess.Popen(cmd + ["--jobs", "2"], cwd=ROOT, stdout=subprocess.DEVNULL)
    states = optuna.trial.TrialState

    def mid_trial() -> bool:  # both workers busy, a running trial with a checkpoint
        if not (out / "trials" / "ple").is_dir():  # the study exists (not half created)
            return False
        trials = _studies(out)["ple"].trials
        running = [t for t in trials if t.state == states.RUNNING and "run_dir" in t.user_attrs]
        return len({t.user_attrs.get("pid") for t in trials} - {None}) == 2 and any(
            latest_checkpoint(out / t.user_attrs["run_dir"] / "checkpoints") for t in running
        )

    try:
        _wait(mid_trial, 80, "two workers' trials, one with a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)  # the tune process, not its workers
        proc.wait()
    trials = _studies(out)["ple"].trials
    pids = {t.user_attrs["pid"] for t in trials if "pid" in t.user_attrs}
    assert len(pids) == 2 and proc.pid not in pids  # two worker processes ran trials
    _wait(lambda: not any(_alive(p) for p in pids), 20, "the workers to die with tune")
    killed = [t for t in trials if t.state == states.RUNNING]
    assert killed
    killed_with_checkpoint = [
        k.number for k in killed if latest_checkpoint(out / k.user_attrs["run_dir"] / "checkpoints")
    ]
    assert killed_with_checkpoint
    assert main(["tune", str(spec), "--out", str(out)]) == 0  # the same command continues
    ple = _studies(out)["ple"]
    done = [t for t in ple.trials if t.state == states.COMPLETE]
    assert len(done) == 3  # the budget, exactly, over both runs
    for k in killed:
        again = ple.trials[k.number]
        assert again.state == states.FAIL and again.user_attrs["interrupted"]
        retry = next(t for t in ple.trials if t.user_attrs.get("retry_of") == k.number)
        assert retry.state == states.COMPLETE
        assert retry.params == k.params and retry.user_attrs["run_dir"] == k.user_attrs["run_dir"]
    for k in killed:  # one with a complete checkpoint continued it, not started over
        log = (out / k.user_attrs["run_dir"] / "fit.log").read_text()
        assert ("resumed from" in log) == (k.number in killed_with_checkpoint), log
    md = (out / "tune.md").read_text()
    assert f"#{killed[0].number}: interrupted (its tune was killed); run again as #" in md
    assert (out / "pareto.png").read_bytes().startswith(PNG)


def test_missing_optuna_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torchrec_ple.train import tune_study

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(SpecError, match=r"requirements/tune.txt"):
        tune_study.require_optuna()
