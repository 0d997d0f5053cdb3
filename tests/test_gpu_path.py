"""The CUDA path, checked on CPU (issue #17; ../shared/reference/cuda-path-review.md).

Every device decision is a small function (:mod:`torchrec_ple.train.device`), so a GPU
host is played by monkeypatching torch's CUDA queries; the planner, the fused optimizer's
parameters, precision and the step loop's host reads run for real on CPU. What needs a GPU
(kernels, NCCL, sync debug mode, peak memory) is ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

import torchrec_ple
from tests.conftest import ROOT
from torchrec_ple.cli import main
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.transforms import TableInfo
from torchrec_ple.data.validate import fit_and_encode
from torchrec_ple.spec import SpecError, load_spec
from torchrec_ple.spec.schema import OptimizerSpec, PlannerSpec
from torchrec_ple.train import device as device_mod
from torchrec_ple.train import distributed, sharding
from torchrec_ple.train.device import SetupError
from torchrec_ple.train.distributed import DistContext
from torchrec_ple.train.pipeline import FiniteLossTrainPipeline, PrefetchedBatches, batch_iterator

SPEC = ROOT / "feature_specs" / "synthetic.yaml"
# 2000 rows / 128 per batch: 16 steps per epoch
TINY = [
    "data.synthetic.train_rows=2000",
    "data.synthetic.validation_rows=200",
    "train.batch_size=128",
    "train.progress=false",
    "train.tensorboard=false",
]
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _one_line(text: str) -> None:
    assert text and "\n" not in text.strip() and "Traceback" not in text, text


def _fake_gpu_host(monkeypatch: pytest.MonkeyPatch, variant: str, gpus: int = 1) -> None:
    """torch reports ``gpus`` GPUs and fbgemm-gpu is the ``variant`` build."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(device_mod, "fbgemm_variant", lambda: variant)


# ------------------------------------------------------------------ 1, 15, 16: the stack


def test_cuda_torch_beside_cpu_fbgemm_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu_host(monkeypatch, "cpu")
    with pytest.raises(SetupError) as e:
        device_mod.compute_device_type()
    text = str(e.value)
    _one_line(text)
    assert text.startswith("fbgemm-gpu: expected its cuda build")
    assert "found the cpu build" in text and "requirements/cuda.txt" in text


def test_fit_on_a_mismatched_stack_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_gpu_host(monkeypatch, "cpu")
    code = main(
        ["fit", str(SPEC), "--out", str(tmp_path / "run"), *sum((["--set", o] for o in TINY), [])]
    )
    err = capsys.readouterr().err
    assert code == 2
    _one_line(err)
    assert err.startswith("error: fbgemm-gpu: expected its cuda build")


def test_cuda_only_optimizer_needs_the_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    adam = ["train.embedding_optimizer.type=adam", "train.embedding_optimizer.lr=0.001"]
    _fake_gpu_host(monkeypatch, "cpu")  # a GPU, but fbgemm's CPU build: no Adam kernel
    with pytest.raises(SpecError) as e:
        load_spec(SPEC, adam)
    assert "train.embedding_optimizer.type" in str(e.value)
    assert "the CUDA build of fbgemm-gpu" in str(e.value)
    monkeypatch.setattr(device_mod, "fbgemm_variant", lambda: "cuda")
    assert load_spec(SPEC, adam).train.embedding_optimizer.type == "adam"


def test_cpu_without_gpu_and_cuda_with_the_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.compute_device_type() == "cpu"
    _fake_gpu_host(monkeypatch, "cuda")
    assert device_mod.compute_device_type() == "cuda"


def test_local_rank_beyond_the_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu_host(monkeypatch, "cuda", gpus=2)
    assert device_mod.local_device(1, "cuda") == torch.device("cuda", 1)
    with pytest.raises(SetupError) as e:
        device_mod.local_device(2, "cuda")
    _one_line(str(e.value))
    assert str(e.value).startswith("LOCAL_RANK: expected a visible GPU index, below")
    assert "found 2" in str(e.value)
    assert device_mod.local_device(5, "cpu") == torch.device("cpu")


def test_set_device_comes_before_the_group_which_gets_device_and_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_gpu_host(monkeypatch, "cuda", gpus=2)
    calls: List[Any] = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("group", kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    ctx = distributed.init_distributed(timeout_s=42)
    assert ctx.device == torch.device("cuda", 1)
    assert [c[0] for c in calls] == ["set_device", "group"]
    kw = calls[1][1]
    assert kw["backend"] == "nccl" and kw["device_id"] == torch.device("cuda", 1)
    assert kw["timeout"] == timedelta(seconds=42)


# ------------------------------------------------------------------------- 4: the timeout


def test_group_kwargs_carry_the_timeout() -> None:
    kw = distributed.group_kwargs(torch.device("cpu"), 12.5)
    assert kw == {"backend": "gloo", "timeout": timedelta(seconds=12.5)}
    assert distributed.group_kwargs(torch.device("cpu"))["timeout"] == timedelta(seconds=1800)
    assert load_spec(SPEC).train.dist_timeout_s == 1800
    with pytest.raises(SpecError, match=r"train.dist_timeout_s: expected a number of seconds > 0"):
        load_spec(SPEC, ["train.dist_timeout_s=0"])


def test_collective_timeout_is_one_line_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    distributed.init_distributed()  # a (one-process) group, as during a run
    # gloo's words for a collective that waited past the group's timeout
    gloo = RuntimeError(
        "[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
        "1800000ms for recv operation to complete"
    )
    line = distributed.collective_timeout_message(gloo)
    assert line is not None and "train.dist_timeout_s" in line and line.startswith("rank 0:")
    assert distributed.collective_timeout_message(RuntimeError("shape mismatch")) is None

    def times_out(args: Any) -> int:
        raise gloo

    monkeypatch.setitem(sys.modules["torchrec_ple.cli"]._COMMANDS, "validate", times_out)
    assert main(["validate", str(SPEC), "--no-data"]) == 3
    err = capsys.readouterr().err
    _one_line(err)
    assert err.startswith("error: rank 0: a collective waited") and "train.dist_timeout_s" in err


# -------------------------------------------------- 5, 6, 7: what the planner is given


class _Lookup(nn.Module):
    """One embedding table on ``meta``, its pooled output as the forward."""

    def __init__(self, rows: int = 20_000, dim: int = 64) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="t_x", embedding_dim=dim, num_embeddings=rows, feature_names=["x"]
                )
            ],
            device=torch.device("meta"),
        )

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        return self.ebc(kjt).values()


def _table(rows: int = 20_000, dim: int = 64, **kw: Any) -> TableInfo:
    return TableInfo("x", dim, rows, "sum", ["x"], **kw)


def test_plan_counts_the_optimizer_state() -> None:
    distributed.init_distributed()
    rows, dim = 20_000, 64
    ddr = {}
    for opt in ("sgd", "rowwise_adagrad", "adagrad", "adam"):
        _, estimate = sharding.plan_sharding(
            _Lookup(rows, dim), [_table(rows, dim)], CPU, OptimizerSpec(opt, lr=0.1), 128
        )
        assert estimate is not None and estimate.kernels == {"t_x": "fused"}
        ddr[opt] = estimate.ddr[0]
    assert ddr["adam"] > ddr["adagrad"] > ddr["rowwise_adagrad"] > ddr["sgd"]
    weights = rows * dim * 4
    # Adam holds 2 states per weight, Adagrad 1, row-wise Adagrad one per row
    assert ddr["adam"] - ddr["sgd"] == pytest.approx(2 * weights, rel=0.01)
    assert ddr["adagrad"] - ddr["sgd"] == pytest.approx(weights, rel=0.01)
    assert ddr["rowwise_adagrad"] - ddr["sgd"] == pytest.approx(rows * 4, rel=0.05)


def test_planner_gets_the_memory_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    distributed.init_distributed()
    seen: List[Any] = []
    create = sharding.TopologyFactory.create_topology

    def spy(trainer_config: Any, **kw: Any) -> Any:
        seen.append(trainer_config)
        return create(trainer_config=trainer_config, **kw)

    monkeypatch.setattr(sharding.TopologyFactory, "create_topology", spy)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    _, est = sharding.plan_sharding(
        _Lookup(), [_table()], CPU, OptimizerSpec("sgd", lr=0.1), 128, PlannerSpec(3.5, 7.0)
    )
    assert seen[-1].hbm_cap_bytes == int(3.5 * 2**30) and seen[-1].ddr_cap_bytes == 7 * 2**30
    assert est is not None and est.ddr_cap == 7 * 2**30
    sharding.plan_sharding(_Lookup(), [_table()], CPU, OptimizerSpec("sgd", lr=0.1), 128)
    assert seen[-1].hbm_cap_bytes is None  # CPU: no HBM
    assert seen[-1].ddr_cap_bytes == device_mod.host_memory_bytes()
    # on a GPU: the device's memory, and the host's RAM shared by the node's ranks
    props = SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    assert device_mod.hbm_cap_bytes(torch.device("cuda", 0)) == 80 * 2**30
    assert device_mod.hbm_cap_bytes(torch.device("cuda", 0), 16) == 16 * 2**30
    assert device_mod.ddr_cap_bytes(8) == device_mod.host_memory_bytes() // 8
    with pytest.raises(SpecError, match=r"train.planner.hbm_cap_gb: expected a number of GiB > 0"):
        load_spec(SPEC, ["train.planner.hbm_cap_gb=0"])


def test_plan_that_does_not_fit_is_one_line() -> None:
    distributed.init_distributed()
    with pytest.raises(SetupError) as e:
        sharding.plan_sharding(
            _Lookup(),
            [_table()],
            CPU,
            OptimizerSpec("adam", lr=0.1),
            128,
            PlannerSpec(ddr_cap_gb=0.001),
        )
    _one_line(str(e.value))
    assert str(e.value).startswith("train.planner: expected a sharding plan within")


def test_compute_kernel_and_cache_load_factor_reach_the_constraints() -> None:
    def one(table: TableInfo, device_type: str = "cuda") -> Any:
        return sharding.constraints([table], 2, device_type)["t_x"]

    uvm = _table(compute_kernel="fused_uvm_caching", cache_load_factor=0.3)
    got = one(uvm)
    assert got.compute_kernels == ["fused_uvm_caching"]
    assert got.cache_params is not None and got.cache_params.load_factor == 0.3
    assert one(_table()).compute_kernels == ["fused", "fused_uvm_caching", "fused_uvm"]
    assert one(_table()).cache_params is None
    assert one(_table(), "cpu").compute_kernels == ["fused"]
    assert one(_table(sharding="data_parallel")).compute_kernels is None  # TorchRec's dense
    with pytest.raises(SetupError) as e:
        one(uvm, "cpu")
    _one_line(str(e.value))
    assert "table 'x': embedding.compute_kernel: expected one of auto, fused on cpu" in str(e.value)


def test_compute_kernel_spec_checks() -> None:
    def error(*overrides: str) -> str:
        with pytest.raises(SpecError) as e:
            load_spec(SPEC, list(overrides))
        return str(e.value)

    spec = load_spec(
        SPEC,
        [
            "features[1].embedding.compute_kernel=fused_uvm_caching",
            "features[2].embedding.cache_load_factor=0.5",
        ],
    )
    items = [f.embedding for f in spec.features if f.embedding.table == "items"]
    assert {(e.compute_kernel, e.cache_load_factor) for e in items} == {("fused_uvm_caching", 0.5)}
    assert "one of auto, fused, fused_uvm, fused_uvm_caching" in error(
        "features[0].embedding.compute_kernel=uvm"
    )
    assert "expected a number in (0, 1]" in error("features[0].embedding.cache_load_factor=1.5")
    assert "no cache_load_factor for table 'user_id'" in error(
        "features[0].embedding.compute_kernel=fused", "features[0].embedding.cache_load_factor=0.2"
    )
    assert "data_parallel tables use the dense kernel" in error(
        "features[0].embedding.sharding=data_parallel", "features[0].embedding.compute_kernel=fused"
    )


# ------------------------------------------------------------------------ 13: weight decay


def test_weight_decay_per_embedding_optimizer() -> None:
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode

    rw = sharding.fused_params(OptimizerSpec("rowwise_adagrad", lr=0.1, weight_decay=0.01))
    assert rw["weight_decay"] == 0.01 and rw["weight_decay_mode"] == WeightDecayMode.L2
    adam = sharding.fused_params(OptimizerSpec("adam", lr=0.1, weight_decay=0.01))
    assert adam["weight_decay"] == 0.01 and "weight_decay_mode" not in adam  # decoupled
    assert "weight_decay" not in sharding.fused_params(OptimizerSpec("adagrad", lr=0.1))
    for opt in ("adagrad", "sgd"):
        with pytest.raises(SpecError) as e:
            load_spec(
                SPEC,
                [
                    f"train.embedding_optimizer.type={opt}",
                    "train.embedding_optimizer.weight_decay=0.01",
                ],
            )
        assert f"0 with embedding_optimizer {opt}" in str(e.value)


def test_table_weight_decay_on_cpu_is_refused_as_fbgemm_ignores_it() -> None:
    """fbgemm-gpu-cpu's row-wise Adagrad leaves a looked-up row with a zero gradient
    unchanged whatever the weight decay mode: refused on CPU instead of silently ignored
    (benchmarks/gpu_check.sh checks the L2 term on a GPU)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        EmbeddingLocation,
        SplitTableBatchedEmbeddingBagsCodegen,
        WeightDecayMode,
    )

    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(10, 4, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1,
        weight_decay=0.5,
        weight_decay_mode=WeightDecayMode.L2,
    )
    before = tbe.split_embedding_weights()[0][1].clone()
    (tbe(torch.tensor([1, 1]), torch.tensor([0, 1, 2])) * 0.0).sum().backward()
    assert torch.equal(tbe.split_embedding_weights()[0][1], before)  # no L2 term on CPU
    distributed.init_distributed()
    opt = OptimizerSpec("rowwise_adagrad", lr=0.1, weight_decay=0.5)
    with pytest.raises(SetupError) as e:
        sharding.shard_model(_Lookup(10, 4), [_table(10, 4)], CPU, opt, 2)
    _one_line(str(e.value))
    assert str(e.value).startswith("train.embedding_optimizer.weight_decay: expected 0 on CPU")


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


# ----------------------------------------------------------------------- 19: predict


def test_predict_on_a_gpu_this_machine_lacks_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [
        "predict",
        "--checkpoint",
        str(tmp_path / "none"),
        "--input",
        str(tmp_path / "x.parquet"),
    ]
    code = main([*argv, "--output", str(tmp_path / "s.parquet"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    _one_line(err)
    assert err.startswith(
        "error: --device: expected cpu on this machine (torch sees no CUDA device)"
    )
    with pytest.raises(SetupError, match="expected cpu, cuda or cuda:N"):
        device_mod.serving_device("tpu")
    assert device_mod.serving_device("cpu") == torch.device("cpu")


def test_exported_program_moves_with_the_export_pass() -> None:
    from torchrec_ple.serving.export import program_on

    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    program = torch.export.export(lin, (x,))
    moved = program_on(program, "cpu")
    torch.testing.assert_close(moved.module()(x), lin(x))


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
