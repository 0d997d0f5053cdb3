"""Masked multi-task loss and loss-weight schedules."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from torchrec_ple.train.loss import ExponentialLossWeights, masked_task_losses


def test_masked_mean_matches_definition() -> None:
    torch.manual_seed(0)
    out = torch.randn(8, 2, requires_grad=True)
    labels = torch.stack([torch.randint(0, 2, (8,)).float(), torch.randn(8)], dim=1)
    masks = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 0], [1, 1], [0, 0], [1, 1], [1, 0]]).float()
    losses = masked_task_losses(out, labels, masks, torch.tensor([True, False]))
    m0, m1 = masks[:, 0].bool(), masks[:, 1].bool()
    ref0 = F.binary_cross_entropy_with_logits(out[m0, 0], labels[m0, 0])
    ref1 = ((out[m1, 1] - labels[m1, 1]) ** 2).mean()
    assert torch.allclose(losses, torch.stack([ref0, ref1]))
    # samples outside a task's space get no gradient from that task
    losses[1].backward()
    assert torch.all(out.grad[~m1, 1] == 0) and torch.all(out.grad[:, 0] == 0)


def test_empty_mask_is_zero_not_nan() -> None:
    out = torch.randn(4, 2, requires_grad=True)
    labels = torch.zeros(4, 2)
    masks = torch.tensor([[1.0, 0.0]] * 4)
    losses = masked_task_losses(out, labels, masks, torch.tensor([True, True]))
    assert losses[1].item() == 0.0 and torch.isfinite(losses).all()
    losses.sum().backward()
    assert torch.isfinite(out.grad).all() and torch.all(out.grad[:, 1] == 0)


def test_padding_rows_do_not_change_loss() -> None:
    out = torch.randn(5, 1)
    labels = torch.randint(0, 2, (5, 1)).float()
    full = masked_task_losses(out[:3], labels[:3], torch.ones(3, 1), torch.tensor([True]))
    padded = masked_task_losses(
        out, labels, torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0]]), torch.tensor([True])
    )
    assert torch.allclose(full, padded)


@pytest.mark.parametrize("t", [0, 1, 10, 1000])
def test_exponential_schedule(t: int) -> None:
    w = ExponentialLossWeights([1.0, 0.5, 2.0], [1.0, 0.99, 0.5])(t)
    expected = [1.0, 0.5 * 0.99**t, 2.0 * 0.5**t]
    for a, b in zip(w.tolist(), expected):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30)


def test_esmm_loss_is_bce_of_the_product() -> None:
    from torchrec_ple.train.loss import esmm_ctcvr_loss

    torch.manual_seed(0)
    a, b = torch.randn(6), torch.randn(6)
    click = torch.tensor([1.0, 1, 0, 1, 0, 1])
    buy = torch.tensor([1.0, 0, 0, 1, 0, 0])  # 0 outside the clicked space
    mask = torch.ones(6)
    got = esmm_ctcvr_loss(a, b, click, buy, mask)
    p = torch.sigmoid(a) * torch.sigmoid(b)
    assert torch.allclose(got, F.binary_cross_entropy(p, click * buy), atol=1e-6)


def _small_module_and_batch(
    types: list[str], labels: list[list[float]], **kwargs: Any
) -> tuple[Any, Any]:
    """A 2-task PLE train module without tables (``kwargs`` to it) and an 8-row batch whose
    rows repeat ``labels`` (two rows) and masks ``[[1, 1], [1, 0]]``."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_ple.data.batch import MultiTaskBatch
    from torchrec_ple.models.multitask import MultiTaskModel
    from torchrec_ple.modules import PLE, TaskTowers
    from torchrec_ple.train.loss import MultiTaskTrainModule

    torch.manual_seed(0)
    head = PLE(4, 2)
    model = MultiTaskModel(None, 4, head, TaskTowers(head.output_dims, [8]))
    batch = MultiTaskBatch(
        dense=torch.randn(8, 4),
        sparse=KeyedJaggedTensor.empty(values_dtype=torch.int64),
        labels=torch.tensor(labels * 4),
        masks=torch.tensor([[1.0, 1.0], [1.0, 0.0]] * 4),
    )
    return MultiTaskTrainModule(model, types, **kwargs), batch


def test_train_module_esmm_and_uncertainty() -> None:
    module, batch = _small_module_and_batch(
        ["binary", "binary"],
        [[1.0, 1.0], [0.0, 0.0]],
        esmm_parents=[-1, 0],
        uncertainty=True,
    )
    loss, (losses, outputs, _, _) = module(batch)
    p = torch.sigmoid(outputs[:, 0]) * torch.sigmoid(outputs[:, 1])
    # the CVR task's reported loss is the entire-space CTCVR loss, on all 8 rows
    assert torch.allclose(
        losses[1], F.binary_cross_entropy(p, batch.labels[:, 0] * batch.labels[:, 1]), atol=1e-5
    )
    loss.backward()
    assert module.log_vars is not None and module.log_vars.grad is not None
    assert torch.all(module.log_vars.grad != 0)


@pytest.mark.parametrize(
    "types",
    [["binary", "binary"], ["regression", "regression"], ["binary", "regression"]],
)
def test_train_module_losses_are_the_masked_means_of_each_kind(types: list[str]) -> None:
    """Binary tasks take cross-entropy on logits, regression tasks squared error, per task
    the masked mean: the same whether the tasks are of one kind or mixed."""
    module, batch = _small_module_and_batch(types, [[1.0, 0.5], [0.0, 2.0]])
    _, (losses, outputs, _, _) = module(batch)
    for k, kind in enumerate(types):
        out, label, mask = outputs[:, k], batch.labels[:, k], batch.masks[:, k]
        if kind == "binary":
            per_row = F.binary_cross_entropy_with_logits(out, label, reduction="none")
        else:
            per_row = (out - label) ** 2
        assert torch.allclose(losses[k], (per_row * mask).sum() / mask.sum(), atol=1e-6)
