"""The CUDA path, checked on CPU (issue #17; ../shared/reference/cuda-path-review.md).

Every device decision is a small function (:mod:`torchrec_ple.train.device`), so a GPU
host is played by monkeypatching torch's CUDA queries; the stack, the process group's
device and timeout, the planner, the fused optimizer's parameters and predict's device
run for real on CPU (the training step's host reads, pinned batches, precision and
memory: tests/test_gpu_step.py). What needs a GPU (kernels, NCCL, sync debug mode, peak
memory) is ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.gpu_path_helpers import SPEC, TINY
from torchrec_ple.cli import main
from torchrec_ple.data.transforms import TableInfo
from torchrec_ple.spec import SpecError, load_spec
from torchrec_ple.spec.schema import OptimizerSpec, PlannerSpec
from torchrec_ple.train import device as device_mod
from torchrec_ple.train import distributed, sharding
from torchrec_ple.train.device import SetupError
from torchrec_ple.train.distributed import DistContext

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
