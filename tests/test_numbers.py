"""Numbers users compare architectures by: exact AUC with ties, one objective over all
ranks, the ESMM loss at saturation, masking by selection (issue #11)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from torchrec_ple.train.loss import esmm_ctcvr_loss, masked_task_losses
from torchrec_ple.train.metrics import binary_auc, task_metrics


def _slow_auc(scores: list[float], labels: list[int], weights: list[float]) -> float:
    """Mann-Whitney over every (positive, negative) pair, a tie counting 1/2."""
    num = den = 0.0
    for si, yi, wi in zip(scores, labels, weights):
        for sj, yj, wj in zip(scores, labels, weights):
            if yi == 1 and yj == 0 and wi > 0 and wj > 0:
                num += wi * wj * (1.0 if si > sj else 0.5 if si == sj else 0.0)
                den += wi * wj
    return num / den


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-3, 3), st.integers(0, 1), st.sampled_from([0.0, 1.0, 1.0, 2.5])),
        min_size=2,
        max_size=60,
    )
)
def test_auc_equals_mann_whitney_with_many_ties(rows: list[tuple[int, int, float]]) -> None:
    scores = [float(s) for s, _, _ in rows]
    labels = [y for _, y, _ in rows]
    weights = [w for _, _, w in rows]
    got = binary_auc(torch.tensor(scores), torch.tensor(labels), torch.tensor(weights))
    has_both = {y for y, w in zip(labels, weights) if w > 0} == {0, 1}
    if not has_both:
        assert got is None
    else:
        assert got == pytest.approx(_slow_auc(scores, labels, weights), abs=1e-12)


def test_auc_ties_cases_from_the_issue() -> None:
    # constant predictions: 0.5 whatever the row order
    for labels in ([1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]):
        assert binary_auc(torch.zeros(4), torch.tensor(labels)) == 0.5
    # [2, 1, 1, 0] with the tie split between a positive and a negative
    assert binary_auc(torch.tensor([2.0, 1, 1, 0]), torch.tensor([1, 1, 0, 0])) == 0.875
    assert binary_auc(torch.tensor([2.0, 1, 1, 0]), torch.tensor([1, 0, 1, 0])) == 0.875


def test_one_class_auc_is_undefined_and_said() -> None:
    out = torch.randn(6, 1)
    m = task_metrics(out, torch.zeros(6, 1), torch.ones(6, 1), ["t"], ["binary"])["t"]
    assert m["auc"] is None and m["ne"] is None and "only negatives" in m["note"]
    m = task_metrics(out, torch.ones(6, 1), torch.zeros(6, 1), ["t"], ["binary"])["t"]
    assert m["count"] == 0 and m["auc"] is None and "no sample" in m["note"]


def test_ne_matches_torchrec_and_is_one_for_the_mean_label() -> None:
    from torchrec.metrics.ne import compute_cross_entropy, compute_ne

    from torchrec_ple.train.metrics import normalized_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, generator=g, dtype=torch.float64) * 2
    labels = (torch.rand(500, generator=g) < torch.sigmoid(logits).float()).double()
    weights = (torch.rand(500, generator=g) < 0.8).double()
    ce = compute_cross_entropy(labels, torch.sigmoid(logits), weights, eta=1e-12).sum()
    pos = (labels * weights).sum()
    ref = compute_ne(ce, weights.sum(), pos, weights.sum() - pos, eta=1e-12)
    assert normalized_entropy(logits, labels, weights) == pytest.approx(float(ref), rel=1e-9)
    p = float(pos / weights.sum())
    mean_logit = torch.full((500,), math.log(p / (1 - p)), dtype=torch.float64)
    assert normalized_entropy(mean_logit, labels, weights) == pytest.approx(1.0, rel=1e-12)


def test_metrics_count_only_the_sample_space() -> None:
    out = torch.tensor([[3.0], [-1.0], [0.5], [9.0]])
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    masks = torch.tensor([[1.0], [1.0], [1.0], [0.0]])  # the 9.0 negative is outside
    m = task_metrics(out, labels, masks, ["t"], ["binary"])["t"]
    assert m["count"] == 3 and m["auc"] == 1.0


def test_esmm_loss_exact_and_alive_at_saturation() -> None:
    a = torch.tensor([20.0, -30.0, 40.0, 0.3], requires_grad=True)
    b = torch.tensor([20.0, 25.0, 40.0, -0.7], requires_grad=True)
    click = torch.tensor([0.0, 1.0, 1.0, 1.0])
    buy = torch.tensor([0.0, 1.0, 0.0, 1.0])
    loss = esmm_ctcvr_loss(a, b, click, buy, torch.ones(4))
    # reference in float64 with the exact identity 1 - s(a)s(b) = s(-a) + s(a)s(-b)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    sa, sb = torch.sigmoid(a64), torch.sigmoid(b64)
    not_p = torch.sigmoid(-a64) + sa * torch.sigmoid(-b64)
    y = (click * buy).double()
    ref = -(y * (torch.log(sa) + torch.log(sb)) + (1 - y) * torch.log(not_p)).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    # both logits at 20, label 0: -log(1 - s(20)^2) = 19.307..., not the clamped 15.94
    single = esmm_ctcvr_loss(a[:1], b[:1], click[:1], buy[:1], torch.ones(1))
    assert single.item() == pytest.approx(19.3069, abs=1e-3)
    loss.backward()
    ref.backward()
    assert torch.allclose(a.grad.double(), a64.grad, rtol=1e-5, atol=1e-9)
    assert torch.allclose(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-9)
    assert a.grad[0] != 0 and b.grad[0] != 0


def test_inf_outside_the_sample_space_stays_out() -> None:
    # 1e20 squared overflows float32 to an inf loss on a row outside task 1's space
    out = torch.tensor([[0.5, 1.0], [0.1, 1e20], [-0.3, 2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.5]])
    masks = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # the inf is outside task 1
    losses = masked_task_losses(out, labels, masks, torch.tensor([True, False]))
    assert torch.isfinite(losses).all()
    assert losses[1].item() == pytest.approx(((1.0 - 1.0) ** 2 + (2.0 - 1.5) ** 2) / 2)
    losses.sum().backward()
    assert torch.isfinite(out.grad).all() and out.grad[1, 1] == 0


def _train_module(uncertainty: bool = True):
    from torchrec_ple.models.multitask import MultiTaskModel
    from torchrec_ple.modules import PLE, TaskTowers
    from torchrec_ple.train.loss import MultiTaskTrainModule

    torch.manual_seed(0)
    head = PLE(4, 2)
    model = MultiTaskModel(None, 4, head, TaskTowers(head.output_dims, [8]))
    return MultiTaskTrainModule(model, ["binary", "regression"], uncertainty=uncertainty)


def _batch(masks: torch.Tensor):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_ple.data.batch import MultiTaskBatch

    n = masks.shape[0]
    return MultiTaskBatch(
        dense=torch.randn(n, 4),
        sparse=KeyedJaggedTensor.empty(values_dtype=torch.int64),
        labels=torch.stack([torch.randint(0, 2, (n,)).float(), torch.randn(n)], 1),
        masks=masks,
    )


def test_uncertainty_term_of_an_absent_task_does_not_pull() -> None:
    module = _train_module()
    masks = torch.tensor([[1.0, 0.0]] * 8)  # the regression task has no sample
    loss, _ = module(_batch(masks))
    loss.backward()
    assert module.log_vars.grad[1] == 0 and module.log_vars.grad[0] != 0


def test_padding_rows_count_nowhere_in_the_train_module() -> None:
    module = _train_module(uncertainty=False)
    batch = _batch(torch.ones(6, 2))
    loss, (losses, *_) = module(batch)
    padded = _batch(torch.cat([torch.ones(6, 2), torch.zeros(4, 2)]))
    padded.dense[:6], padded.labels[:6] = batch.dense, batch.labels
    loss_p, (losses_p, *_) = module(padded)
    assert torch.allclose(losses, losses_p) and torch.allclose(loss, loss_p)


def test_gate_summary_ignores_rows_outside_every_sample_space() -> None:
    import dataclasses

    from torchrec_ple.data.sources import load_tables
    from torchrec_ple.data.validate import fit_and_encode
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.distributed import init_distributed
    from torchrec_ple.train.gates import gate_summary
    from torchrec_ple.train.trainer import build_state

    spec = load_spec(
        ROOT / "feature_specs" / "synthetic.yaml",
        ["data.synthetic.train_rows=300", "data.synthetic.validation_rows=200"],
    )
    train_table, valid_table = load_tables(spec)
    transforms, _, valid = fit_and_encode(spec, train_table, valid_table, None)
    state = build_state(spec, transforms, init_distributed())
    first = gate_summary(spec, state, transforms.encode(valid_table.slice(0, 100)))
    # all 200 rows, the last 100 in no task's sample space (what padding rows are)
    masks = valid.masks.copy()
    masks[100:] = 0.0
    padded = gate_summary(spec, state, dataclasses.replace(valid, masks=masks))
    whole = gate_summary(spec, state, valid)
    assert first and first.keys() == padded.keys()
    for key in first:
        # the same rows in a batch of another size: float32 gates may differ in the last bit
        assert padded[key]["mean"] == pytest.approx(first[key]["mean"], abs=1e-7)
        assert sum(first[key]["mean"]) == pytest.approx(1.0)
    assert any(whole[k]["mean"] != pytest.approx(first[k]["mean"], abs=1e-9) for k in first)


TIES_SPEC = """
data:
  train: {path: train.csv}
  validation: {path: valid.csv}
features:
  - {name: user, type: categorical, embedding: {dim: 4}}
  - {name: price, type: numeric}
tasks:
  - {name: ctr, label: click}
model: {architecture: ple, expert_dims: [8], tower_dims: [4]}
train: {batch_size: 16, epochs: 1, progress: false, tensorboard: false}
"""


def test_fit_where_every_prediction_ties_reports_auc_one_half(tmp_path: Path) -> None:
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.trainer import fit

    # every row has the same features, so every prediction is the same number
    rows = "user,price,click\n" + "".join(f"u1,3.5,{i % 3 == 0:d}\n" for i in range(64))
    (tmp_path / "train.csv").write_text(rows)
    # positives first: an argsort without tie groups would report 1.0 (or 0.0)
    (tmp_path / "valid.csv").write_text(
        "user,price,click\n" + "u1,3.5,1\n" * 10 + "u1,3.5,0\n" * 30
    )
    (tmp_path / "spec.yaml").write_text(TIES_SPEC)
    metrics = fit(load_spec(tmp_path / "spec.yaml"), tmp_path / "run", log=lambda s: None)
    assert metrics["tasks"]["ctr"]["count"] == 40
    assert metrics["tasks"]["ctr"]["auc"] == 0.5


# One step on a global batch of 512 rows: 2 processes x 256 against 1 process x 512, from
# the same initial weights. Plain SGD everywhere so a wrong gradient scale shows (Adam
# would normalize it away).
STEP = [
    "data.synthetic.train_rows=512",
    "data.synthetic.validation_rows=64",
    "train.dense_optimizer.type=sgd",
    "train.dense_optimizer.lr=0.5",
    "train.embedding_optimizer.type=sgd",
    "train.embedding_optimizer.lr=2.0",
]


def _worker(nproc: int, *args: str) -> None:
    import os
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(ROOT / "tests" / "one_step_worker.py"),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _weights(ckpt: Path) -> dict:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    flat = ckpt.with_suffix(".pt")
    dcp_to_torch_save(str(ckpt), str(flat))
    model = torch.load(flat, weights_only=False)["model"]
    return {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("sharding", ["row_wise", "table_wise", "data_parallel"])
def test_two_processes_train_like_one_on_the_same_global_batch(
    tmp_path: Path, sharding: str
) -> None:
    spec = str(ROOT / "feature_specs" / "synthetic.yaml")
    sets = STEP + [f"features[{i}].embedding.sharding={sharding}" for i in (0, 1)]
    init, one, two = tmp_path / "init", tmp_path / "one", tmp_path / "two"
    _worker(1, "init", spec, "-", str(init), "512", *sets)
    _worker(1, "step", spec, str(init), str(one), "512", *sets)
    _worker(2, "step", spec, str(init), str(two), "256", *sets)
    w0, w1, w2 = _weights(init), _weights(one), _weights(two)
    assert w1.keys() == w2.keys() == w0.keys()
    tables = [k for k in w1 if "embedding_bags" in k]
    assert tables and len(w1) > len(tables)
    for k in w1:
        assert not torch.equal(w1[k], w0[k]) or "log_vars" in k, f"{k} did not train"
        diff = (w1[k] - w2[k]).abs().max().item()
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-5), (k, diff)
        # far below the step itself (a mean of per-rank means is off by ~1e-3 of it)
        step = (w1[k] - w0[k]).abs().max().item()
        assert diff <= 1e-4 * step, (k, diff, step)
