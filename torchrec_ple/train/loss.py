"""Masked multi-task loss over the union sample space.

The objective is ``sum_k w_k L_k`` with ``L_k = sum_i phi_ik loss_ik / sum_i phi_ik`` over
the *global* batch: with N processes every rank contributes ``N * (its sum) / (global
count)``, which DDP and TorchRec's sharded tables (both average gradients over ranks) turn
into the gradient of the single-process objective on the same global batch.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchrec_ple.data.batch import MultiTaskBatch
from torchrec_ple.models.multitask import MultiTaskModel
from torchrec_ple.train.weightings import (
    ExponentialLossWeights,
    FixedWeighting,
    LossWeighting,
    UncertaintyWeighting,
)

__all__ = [
    "ExponentialLossWeights",  # re-exported: the ``fixed`` weighting's schedule
    "MultiTaskTrainModule",
    "esmm_ctcvr_loss",
    "esmm_ctcvr_per_sample",
    "masked_mean",
    "masked_sums",
    "masked_task_losses",
    "per_sample_task_losses",
]


def per_sample_task_losses(
    outputs: torch.Tensor, labels: torch.Tensor, is_binary: torch.Tensor, kinds: str = "mixed"
) -> torch.Tensor:
    """Unmasked per-sample losses: binary cross-entropy on logits, else squared error.

    Args:
        outputs (torch.Tensor): (B, K) logits (binary tasks) or values (regression).
        labels (torch.Tensor): (B, K) targets.
        is_binary (torch.Tensor): (K,) bool.
        kinds (str): ``binary`` or ``regression`` when every task is of that kind (the
            caller knows it without reading ``is_binary``): only that loss is computed,
            instead of both and a select. Default: ``mixed``.

    Returns:
        torch.Tensor: (B, K).
    """
    if kinds == "binary":
        return F.binary_cross_entropy_with_logits(outputs, labels, reduction="none")
    if kinds == "regression":
        return (outputs - labels) ** 2
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
    ``loss`` is what the loss weighting (:mod:`torchrec_ple.train.weightings`) makes of the
    per-task losses; the trainer moves its schedule before each step
    (``loss_weighting.set_position(t)``).

    In training with ``world_size > 1`` the per-task counts (and, for ``task_losses``, the
    sums) are all-reduced: ``task_losses`` is then the loss of the global batch on every
    rank, and ``loss`` is this rank's share scaled so that the ranks' averaged gradients
    equal the gradient of the global objective. Padding rows (all masks 0) count nowhere.

    Args:
        model (MultiTaskModel): the model.
        task_types (List[str]): ``binary`` or ``regression`` per task.
        esmm_parents (Optional[List[int]]): per task, the index of the CTR task it is
            trained through (ESMM), or -1. Default: none.
        uncertainty (bool): without ``loss_weighting``: learn Kendall et al.'s per-task
            log-variances (:class:`UncertaintyWeighting`, unit weights), else unit fixed
            weights. Default: False.
        world_size (int): processes whose batches form one global batch. Default: 1.
        precision (str): ``fp32``, or ``bf16``: the model's forward runs under
            ``torch.autocast(device_type)`` in bfloat16 (its matmuls in bfloat16, weights
            float32); its outputs and the losses are float32. Default: ``fp32``.
        device_type (str): the device the module computes on (``cpu`` or ``cuda``), for
            autocast. Default: ``cpu``.
        loss_weighting (Optional[LossWeighting]): how the task losses are combined (see
            :func:`~torchrec_ple.train.weightings.build_weighting`). Default: per
            ``uncertainty``.
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
        loss_weighting: Optional[LossWeighting] = None,
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
        # every task of one kind: only that kind's loss is computed
        binary = [t == "binary" for t in task_types]
        self._kinds = "binary" if all(binary) else "regression" if not any(binary) else "mixed"
        # ESMM: task k's loss is the CTCVR loss on its parent's sample space.
        self.register_buffer("_is_esmm", torch.tensor([p >= 0 for p in parents]), persistent=False)
        self.register_buffer(
            "_parent",
            torch.tensor([p if p >= 0 else i for i, p in enumerate(parents)]),
            persistent=False,
        )
        if loss_weighting is None:
            ones = [1.0] * k
            loss_weighting = (
                UncertaintyWeighting(ones, ones, task_types)
                if uncertainty
                else FixedWeighting(ones, ones)
            )
        self.loss_weighting = loss_weighting

    @property
    def log_vars(self) -> Optional[nn.Parameter]:
        """The uncertainty weighting's learned log-variances ``s_k``, or None."""
        return getattr(self.loss_weighting, "log_vars", None)

    def forward(
        self, batch: MultiTaskBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._bf16:
            with torch.autocast(self._device_type, dtype=torch.bfloat16):
                outputs = self.model(batch.dense, batch.sparse)
            outputs = outputs.float()
        else:
            outputs = self.model(batch.dense, batch.sparse)
        per_sample = per_sample_task_losses(outputs, batch.labels, self._is_binary, self._kinds)
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
        loss = self.loss_weighting(sums * share / denom, counts)
        return loss, (global_sums / denom, outputs.detach(), batch.labels, batch.masks)
