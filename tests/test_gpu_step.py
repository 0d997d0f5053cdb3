"""The CUDA path's training step, checked on CPU (issue #17): the step loop's host reads,
pinned batches, bf16 precision, the memory report, and ``benchmarks/gpu_check.sh``'s
checks (the stack, the planner and predict's device: tests/test_gpu_path.py).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List

import pytest
import torch

import torchrec_ple
from tests.conftest import ROOT
from tests.gpu_path_helpers import SPEC, TINY
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.validate import fit_and_encode
from torchrec_ple.spec import SpecError, load_spec
from torchrec_ple.train import device as device_mod
from torchrec_ple.train import distributed
from torchrec_ple.train.distributed import DistContext
from torchrec_ple.train.pipeline import FiniteLossTrainPipeline, PrefetchedBatches, batch_iterator

# ------------------------------------------- 8, 9, 10: host reads in the training step

_HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")
_PKG = os.path.dirname(torchrec_ple.__file__)
_DATA = os.path.join(_PKG, "data")


@contextmanager
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Count the tensor reads to the host (a device sync on a GPU) that the project's own
    code makes (batch building in ``data/`` aside: it reads NumPy, on CPU), by call site."""
    counts: Counter = Counter()
    with monkeypatch.context() as m:
        for name in _HOST_READS:
            original = getattr(torch.Tensor, name)

            def read(
                self: torch.Tensor, *a: Any, _f: Any = original, _n: str = name, **k: Any
            ) -> Any:
                caller = sys._getframe(1)
                where = caller.f_code.co_filename
                if where.startswith(_PKG) and not where.startswith(_DATA):
                    counts[f"{_n} {os.path.relpath(where, _PKG)}:{caller.f_lineno}"] += 1
                return _f(self, *a, **k)

            m.setattr(torch.Tensor, name, read)
        yield counts


@pytest.fixture(scope="module")
def built() -> Any:
    from torchrec_ple.train.trainer import build_state

    spec = load_spec(SPEC, TINY)
    transforms, train, _ = fit_and_encode(spec, *load_tables(spec))
    return spec, transforms, train, build_state(spec, transforms, distributed.init_distributed())


def _batches(train: Any) -> Iterator[Any]:
    from torchrec_ple.data.batch import BatchLoader

    while True:
        yield from BatchLoader(train, 128, shuffle=True)


@pytest.mark.parametrize("check_finite", [True, False])
def test_finite_check_is_the_steps_only_host_read(
    built: Any, check_finite: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, train, state = built
    pipe = FiniteLossTrainPipeline(
        state.model, state.optimizer, state.ctx.device, check_finite=check_finite
    )
    it = _batches(train)
    pipe.progress(it)  # the first call fills the pipeline
    with host_reads(monkeypatch) as counts:
        for _ in range(4):
            pipe.progress(it)
            assert pipe.last_step_applied
    pipe.detach()
    if check_finite:
        assert list(counts.values()) == [4] and next(iter(counts)).startswith(
            "item train/pipeline.py"
        )
    else:
        assert not counts, counts


def _fit_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int, *extra: str) -> Counter:
    from torchrec_ple.train.trainer import fit

    spec = load_spec(SPEC, [*TINY, "train.log_every=1000", f"train.max_steps={steps}", *extra])
    with host_reads(monkeypatch) as counts:
        fit(spec, tmp_path / f"run{steps}{len(extra)}", log=lambda line: None)
    return counts


def test_step_loop_reads_the_host_only_at_log_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task weights are computed and losses summed on the device: the reads of a fit do not
    grow with its steps between logging intervals (epoch end and checkpoint read once)."""
    off = "train.on_nonfinite_loss=off"
    short, long = (
        _fit_reads(tmp_path, monkeypatch, 3, off),
        _fit_reads(tmp_path, monkeypatch, 9, off),
    )
    assert short == long, set(long.items()) ^ set(short.items())
    # with the finite check on: one read per step, the pipeline's, and nothing else grows
    on3, on9 = _fit_reads(tmp_path, monkeypatch, 3), _fit_reads(tmp_path, monkeypatch, 9)
    grew = {k: on9[k] - on3[k] for k in on9 if on9[k] != on3[k]}
    assert len(grew) == 1 and list(grew.values()) == [6], grew
    assert next(iter(grew)).startswith("item train/pipeline.py")


def test_loss_weights_on_the_device_equal_the_schedule() -> None:
    from torchrec_ple.train.loss import ExponentialLossWeights

    s = ExponentialLossWeights([1.0, 0.2], [0.999, 1.0])
    moved = s.to(torch.device("cpu"))
    assert torch.equal(moved(123), s(123)) and moved(7).dtype == torch.float32


# ------------------------------------------------------------- 11: pinned batches


class _Batch:
    def __init__(self, i: int) -> None:
        self.i, self.pinned = i, False

    def pin_memory(self) -> _Batch:
        out = _Batch(self.i)
        out.pinned = True
        return out


def test_batches_are_pinned_off_the_main_thread_for_a_gpu_only() -> None:
    assert device_mod.pin_batches(torch.device("cuda", 0))
    assert not device_mod.pin_batches(torch.device("cpu"))
    source = [_Batch(i) for i in range(7)]
    cpu = batch_iterator(source, torch.device("cpu"))
    assert not isinstance(cpu, PrefetchedBatches) and [b.i for b in cpu] == list(range(7))
    gpu = batch_iterator(source, torch.device("cuda", 0))
    assert isinstance(gpu, PrefetchedBatches)
    got = list(gpu)
    assert [b.i for b in got] == list(range(7)) and all(b.pinned for b in got)


def test_prefetched_batches_raise_in_order_and_close_early() -> None:
    def failing() -> Iterator[_Batch]:
        yield _Batch(0)
        raise SpecError("x", "y", "z")

    it = PrefetchedBatches(failing(), pin=False)
    assert next(it).i == 0
    with pytest.raises(SpecError):
        next(it)

    def endless() -> Iterator[_Batch]:
        i = 0
        while True:
            yield _Batch(i)
            i += 1

    it = PrefetchedBatches(endless(), depth=2)
    assert [next(it).i for _ in range(3)] == [0, 1, 2]
    it.close()
    assert not it._thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)


# -------------------------------------------------------------------- 18: precision


class _MatmulDtypes:
    """Record the output dtype of every matmul (mm, addmm, bmm, baddbmm) run inside."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        seen: List[torch.dtype] = []
        ops = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}
        ops |= {torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                if func in ops:
                    seen.append(out.dtype)
                return out

        self.seen, self.mode = seen, Mode()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_runs_the_head_in_bf16_with_fp32_losses(precision: str) -> None:
    from torchrec_ple.train.trainer import build_state

    spec = load_spec(SPEC, [*TINY, f"train.precision={precision}"])
    transforms, train, _ = fit_and_encode(spec, *load_tables(spec))
    state = build_state(spec, transforms, distributed.init_distributed())
    pipe = FiniteLossTrainPipeline(state.model, state.optimizer, state.ctx.device)
    it = _batches(train)
    for _ in range(4):
        losses, outputs, _, _ = pipe.progress(it)
        assert pipe.last_step_applied and torch.isfinite(losses).all()
        assert losses.dtype == outputs.dtype == torch.float32
    pipe.detach()
    matmuls = _MatmulDtypes()
    with torch.no_grad(), matmuls.mode:
        _, (task_losses, outputs, _, _) = state.model(next(it))
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert matmuls.seen and set(matmuls.seen) == {want}, matmuls.seen
    assert outputs.dtype == task_losses.dtype == torch.float32
    model = state.model.module.model
    assert all(p.dtype == torch.float32 for p in model.head.parameters())


def test_precision_and_nonfinite_values() -> None:
    with pytest.raises(SpecError, match="train.precision: expected one of fp32, bf16"):
        load_spec(SPEC, ["train.precision=fp16"])
    # YAML 1.1 reads a bare `off` as false: both spell `off`
    assert load_spec(SPEC, ["train.on_nonfinite_loss=off"]).train.on_nonfinite_loss == "off"
    with pytest.raises(SpecError, match="expected one of stop, skip, off, found true"):
        load_spec(SPEC, ["train.on_nonfinite_loss=true"])


def test_bf16_fit_has_finite_losses(tmp_path: Path) -> None:
    from torchrec_ple.train.trainer import fit

    spec = load_spec(SPEC, [*TINY, "train.precision=bf16", "train.epochs=1"])
    metrics = fit(spec, tmp_path / "run", log=lambda line: None)
    losses = metrics["history"][-1]["train_loss"]
    assert losses and all(v == v and abs(v) < 1e6 for v in losses.values())
    assert all(0.0 <= m.get("auc", 0.5) <= 1.0 for m in metrics["tasks"].values())


# ------------------------------------------------------------------------- 20: memory


def test_memory_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchrec_ple.train.trainer import fit, gpu_peak_mb

    metrics = fit(load_spec(SPEC, [*TINY, "train.max_steps=2"]), tmp_path / "r", log=lambda s: None)
    train = metrics["train"]
    spec = load_spec(SPEC, TINY)
    weights = sum(
        t.num_embeddings * t.dim * 4 for t in fit_and_encode(spec, *load_tables(spec))[0].tables()
    )
    # the spec's adagrad holds one state per weight: twice the weights
    assert train["table_mb_per_rank"][0] == pytest.approx(2 * weights / 2**20, rel=1e-6)
    plan = train["plan_mb_per_rank"]
    assert plan["ddr"][0] >= train["table_mb_per_rank"][0] and plan["hbm"] == [0.0]
    assert set(plan["kernels"].values()) == {"fused"}
    assert train["gpu_peak_mb_per_rank"] is None  # CPU
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 5 * 2**20)
    assert gpu_peak_mb(DistContext(0, 1, 0, torch.device("cuda", 0))) == [5.0]


# ------------------------------------------------------------- benchmarks/gpu_check.sh


def test_gpu_check_script_parses_and_its_checks_judge(tmp_path: Path) -> None:
    """The script is valid bash; its comparisons pass and fail as they should (the whole
    script runs on CPU with ``bash benchmarks/gpu_check.sh --cpu``)."""
    import json
    import subprocess

    from benchmarks import gpu_check

    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"tasks": {"ctr": {"auc": 0.7, "ne": 0.9}, "y": {"mse": 1.0}}}))
    b.write_text(json.dumps({"tasks": {"ctr": {"auc": 0.7 + 5e-6, "ne": 0.9}, "y": {"mse": 1.0}}}))
    c.write_text(json.dumps({"tasks": {"ctr": {"auc": 0.72, "ne": 0.9}, "y": {"mse": 1.0}}}))
    same = ["same", str(a), "--tol", "1e-5", "--out"]
    assert gpu_check.main([*same[:2], str(b), *same[2:], str(tmp_path / "s1.json")]) == 0
    assert gpu_check.main([*same[:2], str(c), *same[2:], str(tmp_path / "s2.json")]) == 1
    assert (
        gpu_check.main(["near", str(a), str(c), "--tol", "0.01", "--out", str(tmp_path / "n.json")])
        == 1
    )
    (tmp_path / "steps.tsv").write_text("s1\tok\t3\ns2\tFAILED\t4\n")
    assert gpu_check.main(["summary", str(tmp_path)]) == 1
    table = (tmp_path / "summary.md").read_text()
    assert "| s1 | ok | 3 | max diff 5.0e-06 (tol 1e-05) |" in table and "| s2 | FAILED |" in table
