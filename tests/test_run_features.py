"""What users expect of a run: the best epoch kept and used, early stopping, a learning-rate
schedule, gradient clipping, ``fit.log``, run-folder-only evaluate/predict/export, a
finished run that says so, TensorBoard without duplicated steps, CSV predictions.

Fits are tiny (the synthetic source, a few hundred rows, a few epochs). Where a test needs a
known sequence of validation scores (which epoch is best, when early stopping fires), the
epoch's evaluation is scripted; everything else is the real training loop.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import ROOT
from torchrec_ple.cli import main
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.validate import fit_and_encode
from torchrec_ple.spec import SpecError, load_spec, parse_spec
from torchrec_ple.spec.schema import EarlyStoppingSpec, LrScheduleSpec, SelectSpec, TaskSpec
from torchrec_ple.train import trainer
from torchrec_ple.train.checkpoint import (
    checkpoint_name,
    list_checkpoints,
    prune_checkpoints,
    read_best,
    write_best,
)
from torchrec_ple.train.lr_schedule import LrSchedule
from torchrec_ple.train.select import (
    best_entry,
    describe_select,
    early_stop_reason,
    select_score,
)

SPEC = ROOT / "feature_specs" / "synthetic.yaml"
# 600 rows / 128 per batch: 5 steps per epoch
TINY = [
    "data.synthetic.train_rows=600",
    "data.synthetic.validation_rows=300",
    "train.batch_size=128",
    "train.progress=false",
    "train.tensorboard=false",
]
BEST = re.compile(r"step_\d+ \(best( and last)?: epoch \d")  # describe_checkpoint's words
TASKS = [
    TaskSpec(name="ctr", label="click", type="binary"),
    TaskSpec(name="cvr", label="buy", type="binary"),
    TaskSpec(name="y2", label="y2", type="regression"),
]


def _sets(settings: List[str]) -> List[str]:
    return [a for s in settings for a in ("--set", s)]


def _spec(*extra: str) -> Any:
    return load_spec(SPEC, [*TINY, *extra])


def _spec_error(*extra: str) -> str:
    with pytest.raises(SpecError) as e:
        _spec(*extra)
    text = str(e.value)
    assert "\n" not in text
    return text


def _validation(ctr: float, cvr: float, mse: float = 1.0) -> Dict[str, Dict[str, Any]]:
    return {"ctr": {"auc": ctr}, "cvr": {"auc": cvr, "ne": 0.9}, "y2": {"mse": mse}}


@pytest.fixture
def scripted_scores(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[float]]:
    """Each epoch's cvr AUC comes from this list (ctr 0.6, y2 mse 1.0), in order."""
    scores: List[float] = []
    calls = iter(range(1000))

    def fake(spec: Any, state: Any, data: Any) -> Dict[str, Dict[str, Any]]:
        i = next(calls)
        return {
            "ctr": {"auc": 0.6, "count": 10},
            "cvr": {"auc": scores[min(i, len(scores) - 1)], "count": 10},
            "y2": {"mse": 1.0, "count": 10},
        }

    monkeypatch.setattr(trainer, "evaluate_encoded", fake)
    yield scores


# ------------------------------------------------------------------------------ the spec


def test_select_shapes_load() -> None:
    s = _spec("train.select={metric: {cvr: auc}}").train.select
    assert s == SelectSpec(metric={"cvr": "auc"})
    s = _spec("train.select={weights: {ctr: 0.5, cvr: 0.5}}").train.select
    assert s is not None and s.weights == {"ctr": 0.5, "cvr": 0.5}
    t = _spec(
        "train.early_stopping={patience: 3, min_delta: 0.001}",
        "train.select={metric: {ctr: auc}}",
        "train.lr_schedule={warmup_steps: 10, decay: step, step_size: 100, gamma: 0.5}",
        "train.clip_grad_norm=5",
    ).train
    assert t.early_stopping == EarlyStoppingSpec(patience=3, min_delta=0.001)
    assert t.lr_schedule is not None and t.lr_schedule.step_size == 100
    assert t.clip_grad_norm == 5.0
    assert load_spec(SPEC).train.progress == "auto"


@pytest.mark.parametrize(
    "extra, wanted",
    [
        (["train.select={metric: {cvx: auc}}"], "train.select.metric.cvx: expected a task name"),
        (["train.select={metric: {cvx: auc}}"], "did you mean 'cvr'"),
        (["train.select={metric: {y2: auc}}"], "train.select.metric.y2: expected one of mse"),
        (["train.select={metric: {cvr: acu}}"], "did you mean 'auc'"),
        (["train.select={weights: {ctr: -1}}"], "train.select.weights.ctr: expected a number >= 0"),
        (["train.select={weights: {ctr: 0}}"], "train.select.weights: expected a weight > 0"),
        (["train.select={}"], "train.select: expected metric (task -> metric) or weights"),
        (["train.select={metrics: {ctr: auc}}"], "did you mean 'metric'"),
        (["train.early_stopping={patience: 2}"], "train.early_stopping: expected train.select"),
        (
            ["train.select={metric: {ctr: auc}}", "train.early_stopping={patience: 0}"],
            "train.early_stopping.patience: expected int >= 1",
        ),
        (["train.lr_schedule={decay: cosin}"], "did you mean 'cosine'"),
        (["train.lr_schedule={decay: step}"], "train.lr_schedule.step_size: expected int >= 1"),
        (["train.lr_schedule={warmup: 5}"], "did you mean 'warmup_steps'"),
        (["train.clip_grad_norm=0"], "train.clip_grad_norm: expected a number > 0"),
        (["train.progress=sometimes"], "train.progress: expected true, false or auto"),
        (["train.progress=1"], "train.progress: expected true, false or auto"),
    ],
)
def test_bad_train_keys_are_one_line(extra: List[str], wanted: str) -> None:
    assert wanted in _spec_error(*extra)


def test_select_needs_validation_data(tmp_path: Path) -> None:
    text = SPEC.read_text().replace(
        "source: synthetic", f"source: files\n  train: {tmp_path / 'x.parquet'}"
    )
    with pytest.raises(SpecError, match="train.select: expected validation data"):
        parse_spec(
            text,
            tmp_path / "s.yaml",
            ["data.validation_fraction=0", "train.select={metric: {ctr: auc}}"],
        )


def test_select_in_yaml_names_the_line(tmp_path: Path) -> None:
    text = SPEC.read_text() + "  select: {metric: {ctrr: auc}}\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}:{len(text.splitlines())}: train.select.metric.ctrr")


# ------------------------------------------------------------------- selection, pure parts


def test_select_score_signs_and_weights() -> None:
    one = SelectSpec(metric={"cvr": "auc"})
    assert select_score(one, TASKS, _validation(0.6, 0.7)) == pytest.approx(0.7)
    mixed = SelectSpec(weights={"ctr": 1, "y2": 0.1})
    assert select_score(mixed, TASKS, _validation(0.6, 0.7, mse=2.0)) == pytest.approx(0.4)
    assert describe_select(mixed, TASKS) == "1 ctr auc - 0.1 y2 mse"
    assert describe_select(one, TASKS) == "cvr auc"
    ne = SelectSpec(metric={"cvr": "ne"})
    assert select_score(ne, TASKS, _validation(0.6, 0.7)) == pytest.approx(-0.9)
    undefined = {"ctr": {"auc": None}, "cvr": {"auc": 0.7}, "y2": {"mse": 1.0}}
    assert select_score(SelectSpec(weights={"ctr": 1, "cvr": 1}), TASKS, undefined) is None


def test_best_entry_and_early_stop_from_history() -> None:
    sel = SelectSpec(metric={"cvr": "auc"})
    history = [
        {"epoch": e, "step": 5 * (e + 1), "validation": _validation(0.6, s)}
        for e, s in enumerate([0.60, 0.70, 0.705, 0.69])
    ]
    assert best_entry(history, sel, TASKS)["epoch"] == 2
    assert best_entry(history[:1], sel, TASKS)["epoch"] == 0
    # 0.705 is no improvement by more than 0.01: epochs 2 and 3 count as waiting
    es = EarlyStoppingSpec(patience=2, min_delta=0.01)
    reason = early_stop_reason(history, sel, TASKS, es)
    assert reason is not None and "for 2 epochs since epoch 1 (0.7000)" in reason
    assert early_stop_reason(history, sel, TASKS, EarlyStoppingSpec(patience=3)) is None
    assert early_stop_reason(history[:3], sel, TASKS, es) is None


def test_lr_schedule_factors() -> None:
    groups = [{"lr": 0.1}, {"lr": 0.01}]
    cos = LrSchedule(LrScheduleSpec(warmup_steps=4, decay="cosine", min_lr_ratio=0.1), 24, groups)
    assert [cos.factor(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cos.factor(4) == pytest.approx(1.0)
    assert cos.factor(23) == pytest.approx(0.1)  # the run's last step
    assert cos.factor(100) == pytest.approx(0.1)
    mid = 4 + (24 - 4 - 1) / 2
    assert cos.factor(int(mid)) < 1 and cos.factor(int(mid) + 1) < cos.factor(int(mid))
    cos.apply(1)
    assert [g["lr"] for g in groups] == pytest.approx([0.05, 0.005])
    cos.apply(23)  # the base stays the configured lr, whatever was applied before
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])
    step = LrSchedule(LrScheduleSpec(decay="step", step_size=10, gamma=0.5), 100, [{"lr": 1.0}])
    assert [step.factor(t) for t in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_prune_keeps_the_best(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        ckpt = tmp_path / checkpoint_name(step)
        ckpt.mkdir()
        (ckpt / "trainer.json").write_text("{}")
    write_best(tmp_path, {"checkpoint": checkpoint_name(10), "epoch": 1})
    prune_checkpoints(tmp_path, 1)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        checkpoint_name(10),
        checkpoint_name(20),
    ]
    assert read_best(tmp_path)["epoch"] == 1


def test_progress_auto_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def __init__(self, tty: bool) -> None:
            self._tty = tty

        def isatty(self) -> bool:
            return self._tty

    monkeypatch.setattr("sys.stderr", Tty(False))
    assert not trainer.progress_enabled("auto")
    assert trainer.progress_enabled(True)
    monkeypatch.setattr("sys.stderr", Tty(True))
    assert trainer.progress_enabled("auto")
    assert not trainer.progress_enabled(False)


# ------------------------------------------------------------------------ fit, in process


def test_best_epoch_kept_used_and_early_stop(
    tmp_path: Path, scripted_scores: List[float], capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_scores[:] = [0.60, 0.72, 0.70, 0.69, 0.75]
    out = tmp_path / "run"
    spec = _spec(
        "train.epochs=5",
        "train.keep_checkpoints=1",
        "train.select={metric: {cvr: auc}}",
        "train.early_stopping={patience: 2}",
    )
    lines: List[str] = []
    metrics = trainer.fit(spec, out, log=lines.append)
    best = metrics["best"]
    assert (best["epoch"], best["step"], best["score"]) == (1, 10, 0.72)
    assert best["tasks"]["cvr"]["auc"] == 0.72 and best["checkpoint"] == checkpoint_name(10)
    stop = metrics["train"]["early_stopped"]
    assert stop["epoch"] == 3 and "patience 2" in stop["reason"]
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2, 3]
    # the best checkpoint outlives keep_checkpoints=1, beside the last
    names = [p.name for p in list_checkpoints(out / "checkpoints")]
    assert names == [checkpoint_name(10), checkpoint_name(20)]
    assert read_best(out / "checkpoints")["checkpoint"] == checkpoint_name(10)
    assert any(line.startswith("early stopping after epoch 3:") for line in lines)
    assert any(line.startswith("best epoch 1 (step 10): cvr auc 0.7200") for line in lines)
    assert "(best so far)" in lines[[i for i, x in enumerate(lines) if "epoch 1 " in x][0]]
    # fit.log holds the console lines, under a header
    log = (out / "fit.log").read_text().splitlines()
    assert log[0].startswith("==== ") and "fit new run" in log[0]
    assert set(lines) <= set(log)

    # evaluate, export and predict use the best checkpoint unless asked for the last
    ckpt, _ = trainer.resolve_checkpoint(out)
    assert ckpt.name == checkpoint_name(10)
    assert trainer.resolve_checkpoint(out, "last")[0].name == checkpoint_name(20)
    assert trainer.resolve_checkpoint(out, "20")[0].name == checkpoint_name(20)
    assert "(best: epoch 1, cvr auc 0.7200)" in trainer.describe_checkpoint(ckpt)
    last = trainer.resolve_checkpoint(out, "last")[0]
    assert trainer.describe_checkpoint(last) == f"{checkpoint_name(20)} (last, after epoch 3)"

    # resuming the early-stopped run: says so, trains nothing, rc 0
    capsys.readouterr()
    args = ["fit", str(SPEC), "--out", str(out), "--resume"]
    extra = ["train.epochs=5", "train.keep_checkpoints=1", "train.select={metric: {cvr: auc}}"]
    assert main([*args, *_sets([*TINY, *extra, "train.early_stopping={patience: 2}"])]) == 0
    said = capsys.readouterr().out
    assert "is finished: it stopped early after epoch 3" in said
    assert "raise train.early_stopping.patience" in said
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == names
    log = (out / "fit.log").read_text()
    assert log.count("==== ") == 2 and "fit --resume" in log

    # a larger patience (a resumable key) trains on: epoch 4 scores 0.75, the new best
    assert main([*args, *_sets([*TINY, *extra, "train.early_stopping={patience: 3}"])]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best"]["epoch"] == 4 and metrics["train"]["early_stopped"] is None
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2, 3, 4]
    assert read_best(out / "checkpoints")["checkpoint"] == checkpoint_name(25)


def test_finished_run_says_so_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    fit = ["fit", str(SPEC), "--out", str(out), *_sets([*TINY, "train.epochs=1"])]
    assert main(fit) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main([*fit, "--resume"]) == 0
    said = capsys.readouterr().out
    assert "is finished: all 1 epochs are done (step 5); nothing to train" in said
    assert (out / "metrics.json").read_text() == before


def test_tensorboard_has_no_duplicate_steps_after_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    settings = [*TINY, "train.tensorboard=true", "train.log_every=1"]
    fit = ["fit", str(SPEC), "--out", str(out)]
    assert main([*fit, *_sets([*settings, "train.epochs=1", "train.checkpoint_every=2"])]) == 0
    # the run goes on from its epoch-1 checkpoint (step 5), as after a crash at step 5
    assert main([*fit, "--resume", *_sets([*settings, "train.epochs=2"])]) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("loss/ctr")]
    assert steps == list(range(1, 11))


def test_lr_schedule_reaches_the_fused_tables() -> None:
    spec = _spec("train.lr_schedule={warmup_steps: 4}", "train.epochs=1")
    ctx = trainer.init_distributed()
    transforms = fit_and_encode(spec, *load_tables(spec))[0]
    state = trainer.build_state(spec, transforms, ctx)
    sched = trainer._lr_schedule(spec, state, 5, None)
    assert sched is not None
    sched.apply(0)
    state.optimizer.zero_grad()  # TorchRec hands the fused groups' lr to fbgemm here
    # the fbgemm modules behind TorchRec's fused optimizers (one per table group)
    tbes, todo = [], [state.model.fused_optimizer]
    while todo:
        opt = todo.pop()
        todo += [o for _, o in getattr(opt, "optimizers", [])]
        if hasattr(opt, "_emb_module"):
            tbes.append(opt._emb_module)
    assert tbes, "no fbgemm table module found"
    emb_lr = spec.train.embedding_optimizer.lr
    assert all(m.get_learning_rate() == pytest.approx(emb_lr / 4) for m in tbes)
    dense_lr = spec.train.dense_optimizer.lr
    fused = {id(g) for g in state.model.fused_optimizer.param_groups}
    dense = [g for g in state.optimizer.param_groups if id(g) not in fused]
    assert dense and all(g["lr"] == pytest.approx(dense_lr / 4) for g in dense)


def test_clip_grad_norm_clips_the_dense_gradients(tmp_path: Path) -> None:
    spec = _spec("train.epochs=1", "train.clip_grad_norm=1e-6")
    metrics = trainer.fit(spec, tmp_path / "run", log=lambda line: None)
    assert metrics["train"]["clipped_steps"] == metrics["train"]["steps"] == 5
    assert metrics["train"]["clip_grad_norm"] == 1e-6


def test_pipeline_clips_between_backward_and_step() -> None:
    """The clipped norm is what the optimizer step sees."""
    from torchrec_ple.train.pipeline import FiniteLossTrainPipeline

    w = torch.nn.Parameter(torch.ones(3))
    seen: List[float] = []

    class Opt(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:  # type: ignore[override]
            assert w.grad is not None
            seen.append(float(w.grad.norm()))
            return super().step(closure)

    # only the parts _optimizer_step uses: no model to pipeline
    pipe = FiniteLossTrainPipeline.__new__(FiniteLossTrainPipeline)
    pipe._clip_params, pipe._clip_grad_norm = [w], 0.5
    pipe.last_grad_norm, pipe.clipped_steps = None, None
    pipe._optimizer = Opt([w], lr=0.1)
    pipe.contexts = [SimpleNamespace(index=0)]
    (w * torch.tensor([3.0, 4.0, 0.0])).sum().backward()
    pipe.last_step_applied = True
    pipe._optimizer_step()
    assert seen == [pytest.approx(0.5)]
    assert float(pipe.last_grad_norm) == pytest.approx(5.0) and int(pipe.clipped_steps) == 1


# -------------------------------------------------------------------- the run folder alone


@pytest.fixture(scope="module")
def files_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a spec with relative data paths, fitted from the spec's own folder."""
    from torchrec_ple.data.synthetic import generate
    from torchrec_ple.spec.schema import SyntheticSpec

    base = tmp_path_factory.mktemp("files")
    train, valid = generate(SyntheticSpec(train_rows=600, validation_rows=300, seed=1))
    (base / "data").mkdir()
    pq.write_table(train, base / "data" / "train.parquet")
    pq.write_table(valid, base / "data" / "valid.parquet")
    raw = yaml.safe_load(SPEC.read_text())
    raw["data"] = {"train": "data/train.parquet", "validation": {"path": "data/valid.parquet"}}
    raw["train"].update({"epochs": 2, "batch_size": 128, "progress": False, "tensorboard": False})
    raw["train"]["select"] = {"weights": {"ctr": 0.5, "cvr": 0.5}}
    (base / "spec.yaml").write_text(yaml.safe_dump(raw))
    out = base / "runs" / "r"
    assert main(["fit", str(base / "spec.yaml"), "--out", str(out)]) == 0
    return out


def test_saved_spec_has_absolute_data_paths(files_run: Path) -> None:
    saved = yaml.safe_load((files_run / "spec.yaml").read_text())
    base = files_run.parent.parent
    assert saved["data"]["train"] == str(base / "data" / "train.parquet")
    assert saved["data"]["validation"]["path"] == str(base / "data" / "valid.parquet")


def test_evaluate_from_the_run_folder_alone(
    files_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # anywhere but the spec's folder
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(files_run), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    best = json.loads((files_run / "metrics.json").read_text())["best"]
    assert result["checkpoint"]["path"].endswith(best["checkpoint"])
    assert BEST.search(captured.err)
    for task in ("ctr", "cvr"):
        assert result["tasks"][task]["auc"] == pytest.approx(best["tasks"][task]["auc"], abs=1e-9)
    # --input: other rows; --checkpoint-step last: the newest checkpoint
    valid = files_run.parent.parent / "data" / "valid.parquet"
    half = tmp_path / "half.parquet"
    pq.write_table(pq.read_table(valid).slice(0, 150), half)
    assert main(["evaluate", "--checkpoint", str(files_run), "--input", str(half)]) == 0
    said = capsys.readouterr().out
    assert f"on {half}" in said
    args = ["evaluate", "--checkpoint", str(files_run), "--checkpoint-step", "last", "--json"]
    assert main(args) == 0
    last = json.loads(capsys.readouterr().out)
    assert last["checkpoint"]["path"].endswith(checkpoint_name(10))  # 2 epochs of 5 steps
    assert "last" in last["checkpoint"]["description"]
    metrics = json.loads((files_run / "metrics.json").read_text())
    assert last["tasks"]["cvr"]["auc"] == pytest.approx(metrics["tasks"]["cvr"]["auc"], abs=1e-9)


def test_evaluate_names_a_missing_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["fit", str(SPEC), "--out", str(out), *_sets([*TINY, "train.epochs=1"])]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--checkpoint-step", "best"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "expected a best checkpoint" in err
    assert "--checkpoint-step last" in err and len(err.strip().splitlines()) == 1


def test_predict_and_export_from_the_run_folder(
    files_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    valid = files_run.parent.parent / "data" / "valid.parquet"
    out_csv = tmp_path / "scores.csv"
    capsys.readouterr()
    args = ["predict", "--checkpoint", str(files_run), "--input", str(valid)]
    assert main([*args, "--output", str(out_csv), "--keep", "user_id"]) == 0
    said = capsys.readouterr().out
    assert "checkpoint step_" in said and BEST.search(said)
    table = pacsv.read_csv(out_csv)
    assert table.column_names == ["user_id", "ctr", "cvr", "y2"] and table.num_rows == 300
    assert main([*args, "--output", str(tmp_path / "scores.csv.gz")]) == 0
    gz = pacsv.read_csv(pa.input_stream(str(tmp_path / "scores.csv.gz"), compression="gzip"))
    assert gz.num_rows == 300
    assert main([*args, "--output", str(tmp_path / "scores.parquet")]) == 0
    parquet = pq.read_table(tmp_path / "scores.parquet")
    for t in ("ctr", "cvr", "y2"):
        a, b = parquet[t].to_numpy(), table[t].to_numpy()
        assert all(math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6) for x, y in zip(a, b))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(files_run), "--out", str(tmp_path / "m")]) == 0
    said = capsys.readouterr().out
    assert "from checkpoint step_" in said and BEST.search(said)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    best = read_best(files_run / "checkpoints")
    assert manifest["checkpoint"].endswith(best["checkpoint"])
    assert BEST.search(manifest["checkpoint_choice"])
    assert manifest["checkpoint_choice"].startswith(best["checkpoint"])
