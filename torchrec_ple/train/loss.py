"""Masked multi-task loss over the union sample space, and loss-weight schedules.

The objective is ``sum_k w_k L_k`` with ``L_k = sum_i phi_ik loss_ik / sum_i phi_ik`` over
the *global* batch: with N processes every rank contributes ``N * (its sum) / (global
count)``, which DDP and TorchRec's sharded tables (both average gradients over ranks) turn
into the gradient of the single-process objective on the same global batch.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchrec_ple.data.batch import MultiTaskBatch
from torchrec_ple.models.multitask import MultiTaskModel


def per_sample_task_losses(
    outputs: torch.Tensor, labels: torch.Tensor, is_binary: torch.Tensor
) -> torch.Tensor:
    """Unmasked per-sample losses: binary cross-entropy on logits, else squared error.

    Args:
        outputs (torch.Tensor): (B, K) logits (binary tasks) or values (regression).
        labels (torch.Tensor): (B, K) targets.
        is_binary (torch.Tensor): (K,) bool.

    Returns:
        torch.Tensor: (B, K).
    """
    bce = F.binary_cross_entropy_with_logits(outputs, labels, reduction="none")
    sq = (outputs - labels) ** 2
    return torch.where(is_binary.unsqueeze(0), bce, sq)


def masked_sums(per_sample: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-column sums of the losses of the samples in the sample space, and their counts.

    Selects rather than multiplies: an inf loss outside a task's sample space stays out
    instead of becoming ``inf * 0 = NaN``.

    Args:
        per_sample (torch.Tensor): (B, K) losses.
        masks (torch.Tensor): (B, K) ``phi`` in {0, 1}.

    Returns:
        Tuple[torch.Tensor, torch.Tensor]: (K,) sums and (K,) counts.
    """
    in_space = masks > 0
    sums = torch.where(in_space, per_sample, torch.zeros_like(per_sample)).sum(dim=0)
    return sums, in_space.sum(dim=0).to(sums.dtype)


def masked_mean(per_sample: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``sum_i phi_ik loss_ik / sum_i phi_ik`` per column; 0 (and no gradient) for a
    column with no sample.

    Args:
        per_sample (torch.Tensor): (B, K) losses.
        masks (torch.Tensor): (B, K) ``phi`` in {0, 1}.

    Returns:
        torch.Tensor: (K,).
    """
    sums, counts = masked_sums(per_sample, masks)
    return sums / counts.clamp(min=1.0)


def masked_task_losses(
    outputs: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, is_binary: torch.Tensor
) -> torch.Tensor:
    """Per-task masked mean ``L_k = sum_i phi_ik loss_ik / sum_i phi_ik`` of one batch.

    A task with no sample in the batch (``sum phi = 0``) gets loss 0 and no gradient,
    rather than NaN.

    Args:
        outputs (torch.Tensor): (B, K) logits (binary tasks) or values (regression).
        labels (torch.Tensor): (B, K) targets.
        masks (torch.Tensor): (B, K) ``phi`` in {0, 1}.
        is_binary (torch.Tensor): (K,) bool: binary cross-entropy, else squared error.

    Returns:
        torch.Tensor: (K,) per-task losses.
    """
    return masked_mean(per_sample_task_losses(outputs, labels, is_binary), masks)


class ExponentialLossWeights:
    """The paper's dynamic task weights ``w_k(t) = w_k0 * gamma_k ** t``.

    Args:
        initial (Sequence[float]): ``w_k0`` per task.
        decay (Sequence[float]): ``gamma_k`` per task.

    Example::

        schedule = ExponentialLossWeights([1.0, 1.0], [1.0, 0.999])
        schedule(10)  # tensor([1.0000, 0.9900])
    """

    def __init__(self, initial: Sequence[float], decay: Sequence[float]) -> None:
        self._initial = torch.tensor(list(initial), dtype=torch.float64)
        self._decay = torch.tensor(list(decay), dtype=torch.float64)

    def __call__(self, t: int) -> torch.Tensor:
        """(K,) float32 weights at step or epoch ``t`` (on the schedule's device)."""
        return (self._initial * self._decay**t).float()

    def to(self, device: torch.device) -> ExponentialLossWeights:
        """The same schedule computed on ``device``: no host-to-device copy per step."""
        out = ExponentialLossWeights.__new__(ExponentialLossWeights)
        out._initial, out._decay = self._initial.to(device), self._decay.to(device)
        return out


def esmm_ctcvr_per_sample(
    ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, ctcvr_label: torch.Tensor
) -> torch.Tensor:
    """BCE of ``pCTCVR = sigmoid(a) * sigmoid(b)`` against ``click * buy``, exact when the
    sigmoids saturate: ``log p = logsigmoid(a) + logsigmoid(b)`` and, since
    ``1 - s(a) s(b) = s(-a) + s(a) s(-b)``, ``log(1 - p) = logaddexp(logsigmoid(-a),
    logsigmoid(a) + logsigmoid(-b))`` (no ``1 - p`` is ever formed).

    Args:
        ctr_logit (torch.Tensor): (...) CTR logits ``a``.
        cvr_logit (torch.Tensor): (...) CVR logits ``b``.
        ctcvr_label (torch.Tensor): (...) ``click * buy``.

    Returns:
        torch.Tensor: (...) per-sample losses.
    """
    ls_a, ls_b = F.logsigmoid(ctr_logit), F.logsigmoid(cvr_logit)
    log_p = ls_a + ls_b
    log_not_p = torch.logaddexp(F.logsigmoid(-ctr_logit), ls_a + F.logsigmoid(-cvr_logit))
    return -(ctcvr_label * log_p + (1 - ctcvr_label) * log_not_p)


def esmm_ctcvr_loss(
    ctr_logit: torch.Tensor,
    cvr_logit: torch.Tensor,
    ctr_label: torch.Tensor,
    cvr_label: torch.Tensor,
    ctr_mask: torch.Tensor,
) -> torch.Tensor:
    """ESMM's entire-space loss: masked mean BCE of ``pCTR * pCVR`` against ``click * buy``.

    Args:
        ctr_logit (torch.Tensor): (B,) CTR logits.
        cvr_logit (torch.Tensor): (B,) CVR logits.
        ctr_label (torch.Tensor): (B,) clicks.
        cvr_label (torch.Tensor): (B,) conversions, 0 outside the CVR sample space.
        ctr_mask (torch.Tensor): (B,) the CTR task's sample space (the "entire space").

    Returns:
        torch.Tensor: () the masked mean loss.
    """
    per_sample = esmm_ctcvr_per_sample(ctr_logit, cvr_logit, ctr_label * cvr_label)
    return masked_mean(per_sample[:, None], ctr_mask[:, None])[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of a detached copy of ``t`` over every rank of the default process group.

    Wrapped for torch.fx (TorchRec's pipeline traces the train module to find its sharded
    modules), so the trace records one call instead of entering ``torch.distributed``.
    """
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


torch.fx.wrap("all_reduce_sum")


class MultiTaskTrainModule(nn.Module):
    """Wraps a :class:`MultiTaskModel` into what TorchRec's train pipelines call.

    ``forward(batch)`` returns ``(loss, (task_losses, outputs, labels, masks))`` where
    ``loss = sum_k w_k L_k`` (or, with uncertainty weighting, ``sum_k w_k (c_k exp(-s_k)
    L_k + [k present] s_k / 2)`` with learned ``s_k``); the trainer sets ``w`` before each
    step with :meth:`set_task_weights`.

    In training with ``world_size > 1`` the per-task counts (and, for ``task_losses``, the
    sums) are all-reduced: ``task_losses`` is then the loss of the global batch on every
    rank, and ``loss`` is this rank's share scaled so that the ranks' averaged gradients
    equal the gradient of the global objective. Padding rows (all masks 0) count nowhere.

    Args:
        model (MultiTaskModel): the model.
        task_types (List[str]): ``binary`` or ``regression`` per task.
        esmm_parents (Optional[List[int]]): per task, the index of the CTR task it is
            trained through (ESMM), or -1. Default: none.
        uncertainty (bool): learn Kendall et al.'s per-task log-variances. Default: False.
        world_size (int): processes whose batches form one global batch. Default: 1.
        precision (str): ``fp32``, or ``bf16``: the model's forward runs under
            ``torch.autocast(device_type)`` in bfloat16 (its matmuls in bfloat16, weights
            float32); its outputs and the losses are float32. Default: ``fp32``.
        device_type (str): the device the module computes on (``cpu`` or ``cuda``), for
            autocast. Default: ``cpu``.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        task_types: List[str],
        esmm_parents: Optional[List[int]] = None,
        uncertainty: bool = False,
        world_size: int = 1,
        precision: str = "fp32",
        device_type: str = "cpu",
    ) -> None:
        super().__init__()
        self.model = model
        self._bf16 = precision == "bf16"
        self._device_type = device_type
        k = len(task_types)
        parents = list(esmm_parents or [-1] * k)
        self._has_esmm = any(p >= 0 for p in parents)
        self._world_size = world_size
        self.register_buffer(
            "_is_binary", torch.tensor([t == "binary" for t in task_types]), persistent=False
        )
        self.register_buffer("_task_weights", torch.ones(k), persistent=False)
        # ESMM: task k's loss is the CTCVR loss on its parent's sample space.
        self.register_buffer("_is_esmm", torch.tensor([p >= 0 for p in parents]), persistent=False)
        self.register_buffer(
            "_parent",
            torch.tensor([p if p >= 0 else i for i, p in enumerate(parents)]),
            persistent=False,
        )
        self.register_buffer(
            "_scale",
            torch.tensor([1.0 if t == "binary" else 0.5 for t in task_types]),
            persistent=False,
        )
        self.log_vars: Optional[nn.Parameter] = (
            nn.Parameter(torch.zeros(k)) if uncertainty else None
        )

    def set_task_weights(self, weights: torch.Tensor) -> None:
        self._task_weights.copy_(weights)

    def forward(
        self, batch: MultiTaskBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._bf16:
            with torch.autocast(self._device_type, dtype=torch.bfloat16):
                outputs = self.model(batch.dense, batch.sparse)
            outputs = outputs.float()
        else:
            outputs = self.model(batch.dense, batch.sparse)
        per_sample = per_sample_task_losses(outputs, batch.labels, self._is_binary)
        masks = batch.masks
        if self._has_esmm:
            parent_out = outputs.index_select(1, self._parent)
            parent_label = batch.labels.index_select(1, self._parent)
            ctcvr = esmm_ctcvr_per_sample(parent_out, outputs, parent_label * batch.labels)
            per_sample = torch.where(self._is_esmm.unsqueeze(0), ctcvr, per_sample)
            masks = torch.where(
                self._is_esmm.unsqueeze(0), masks.index_select(1, self._parent), masks
            )
        sums, counts = masked_sums(per_sample, masks)
        if self._world_size > 1 and self.training:
            totals = all_reduce_sum(torch.stack([sums.detach(), counts]))
            global_sums, counts = totals[0], totals[1]
            share = self._world_size
        else:
            global_sums, share = sums.detach(), 1
        denom = counts.clamp(min=1.0)
        losses = sums * share / denom
        if self.log_vars is not None:
            present = (counts > 0).to(losses.dtype)
            weighted = (
                self._scale * torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars * present
            )
        else:
            weighted = losses
        loss = (weighted * self._task_weights).sum()
        return loss, (global_sums / denom, outputs.detach(), batch.labels, batch.masks)
