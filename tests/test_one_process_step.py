"""The one-process training step's shortcuts change no number: local distributions instead of
TorchRec's all-to-alls, torch's fused dense optimizer, gradients dropped rather than zeroed."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
import torch

from tests.conftest import ROOT
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.validate import fit_and_encode
from torchrec_ple.spec import load_spec
from torchrec_ple.train import sharding
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.local_dist import (
    LocalPooledEmbeddingDist,
    LocalSparseFeaturesDist,
    keep_local,
)
from torchrec_ple.train.pipeline import FiniteLossTrainPipeline
from torchrec_ple.train.state import _fused_dense, build_state, dense_params


def _spec(dense_optimizer: str = "adam") -> Any:
    return load_spec(
        ROOT / "feature_specs" / "synthetic.yaml",
        [
            "data.synthetic.train_rows=256",
            "data.synthetic.validation_rows=64",
            "train.batch_size=32",
            f"train.dense_optimizer.type={dense_optimizer}",
        ],
    )


def _train(spec: Any, steps: int) -> Tuple[List[torch.Tensor], Any]:
    """Train ``steps`` steps of TorchRec's pipeline; the losses and the final state."""
    transforms, enc, _ = fit_and_encode(spec, *load_tables(spec), None)
    torch.manual_seed(0)
    state = build_state(spec, transforms, init_distributed())
    from torchrec_ple.data.batch import BatchLoader

    loader = BatchLoader(enc, spec.train.batch_size, shuffle=True, seed=0)
    pipeline = FiniteLossTrainPipeline(state.model, state.optimizer, torch.device("cpu"))
    batches, losses = iter(loader), []
    for _ in range(steps):
        loss, *_ = pipeline.progress(batches)
        losses.append(loss.detach().clone())
    return losses, state


def _sharded_ebc(state: Any) -> Any:
    from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection

    found = [m for m in state.model.modules() if isinstance(m, ShardedEmbeddingBagCollection)]
    assert len(found) == 1
    return found[0]


def test_local_distributions_train_exactly_as_torchrecs_all_to_alls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _spec()
    local_losses, local = _train(spec, 6)
    ebc = _sharded_ebc(local)
    assert all(isinstance(d, LocalPooledEmbeddingDist) for d in ebc._output_dists)
    assert all(isinstance(d, LocalSparseFeaturesDist) for d in ebc._input_dists)

    monkeypatch.setattr(sharding, "keep_local", lambda sharded, world_size: [])
    ref_losses, ref = _train(spec, 6)
    assert not any(isinstance(d, LocalPooledEmbeddingDist) for d in _sharded_ebc(ref)._output_dists)

    for a, b in zip(local_losses, ref_losses):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours, theirs = local.model.state_dict(), ref.model.state_dict()
    assert ours.keys() == theirs.keys()  # the distributions hold no state
    for key in ours:
        a, b = ours[key], theirs[key]
        if hasattr(a, "local_shards"):  # sharded table weights
            a, b = a.local_shards()[0].tensor, b.local_shards()[0].tensor
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


def test_keep_local_changes_nothing_with_more_ranks_or_another_module() -> None:
    spec = _spec()
    transforms, _, _ = fit_and_encode(spec, *load_tables(spec), None)
    state = build_state(spec, transforms, init_distributed())
    ebc = _sharded_ebc(state)
    before = list(ebc._output_dists)
    assert keep_local(ebc, world_size=2) == []
    assert keep_local(torch.nn.Linear(2, 2), world_size=1) == []
    assert list(ebc._output_dists) == before


def test_dense_optimizer_runs_torchs_fused_kernel_where_there_is_one() -> None:
    cpu = [torch.zeros(3, requires_grad=True)]
    assert _fused_dense("adam", cpu) and _fused_dense("adamw", cpu)
    assert _fused_dense("adagrad", cpu)
    assert not _fused_dense("sgd", cpu)  # its fused CPU kernel is no faster
    assert not _fused_dense("adam", [torch.zeros(3, device="meta")])
    assert not _fused_dense("adam", [torch.zeros(3, dtype=torch.float64)])
    for kind, fused in (("adam", True), ("sgd", False)):
        losses, state = _train(_spec(kind), 2)
        dense = state.optimizer.optimizers[1][1]
        assert bool(dense.param_groups[0].get("fused")) is fused
        assert all(torch.isfinite(loss).all() for loss in losses)


def test_fused_adam_steps_equal_the_loop_implementation() -> None:
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fused = torch.optim.Adam(params, lr=1e-2, fused=True)
    loop = torch.optim.Adam(twins, lr=1e-2, foreach=False)
    for step in range(5):
        for group in (params, twins):
            for p in group:
                p.grad = torch.full_like(p, 0.1 * (step + 1)) * torch.arange(p.numel()).view_as(p)
        fused.step()
        loop.step()
    for a, b in zip(params, twins):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_zero_grad_drops_the_dense_gradients() -> None:
    _, state = _train(_spec(), 1)
    params = dense_params(state)
    for p in params:
        p.grad = torch.ones_like(p)
    state.optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_the_gates_recorded_while_scoring_equal_a_pass_of_their_own(tmp_path) -> None:
    from torchrec_ple.train.gates import gate_summary
    from torchrec_ple.train.trainer import Trainer

    spec = _spec()
    trainer = Trainer(spec, tmp_path / "run", log=lambda _: None)
    assert trainer.setup(resume=False, overwrite=False) is None
    trainer.restore()
    trainer.train_epoch(0)  # evaluates at the end of the epoch, recording the gates
    step, recorded = trainer._scored_gates
    assert step == trainer.steps.step and recorded
    own = gate_summary(spec, trainer.state, trainer.data.validation)
    assert recorded.keys() == own.keys()
    for key in own:
        assert recorded[key]["experts"] == own[key]["experts"]
        assert recorded[key]["mean"] == pytest.approx(own[key]["mean"], abs=1e-12)
    head = trainer.state.model.module.model.head
    assert "forward" not in vars(head)  # the head's own forward again
    assert trainer.finish()["gates"] == recorded


def test_the_recorded_gates_stop_at_max_rows_as_the_own_pass_does(tmp_path) -> None:
    from torchrec_ple.train.gates import GatesWhileScoring, gate_summary
    from torchrec_ple.train.scoring import evaluate_encoded
    from torchrec_ple.train.trainer import Trainer

    spec = load_spec(
        ROOT / "feature_specs" / "synthetic.yaml",
        [
            "data.synthetic.train_rows=128",
            "data.synthetic.validation_rows=64",
            "train.batch_size=32",
            "train.eval_batch_size=16",
        ],
    )
    trainer = Trainer(spec, tmp_path / "run", log=lambda _: None)
    trainer.setup(resume=False, overwrite=False)
    valid = trainer.data.validation
    with GatesWhileScoring(spec, trainer.state, 16, max_rows=20) as recorder:
        evaluate_encoded(spec, trainer.state, valid)
    recorded = recorder.summary()
    own = gate_summary(spec, trainer.state, valid, max_rows=20)  # batches 0 and 1
    everything = gate_summary(spec, trainer.state, valid)
    assert recorded is not None and recorded.keys() == own.keys()
    for key in own:
        assert recorded[key]["mean"] == pytest.approx(own[key]["mean"], abs=1e-12)
    assert any(own[k]["mean"] != pytest.approx(everything[k]["mean"], abs=1e-9) for k in own)
