"""Per-task evaluation metrics, each over the task's own sample space."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F


def binary_auc(
    scores: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None
) -> Optional[float]:
    """Exact ROC AUC with ties: the weighted Mann-Whitney statistic, a tied pair counting 1/2.

    ``AUC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)``,
    computed in O(n log n) by grouping equal scores. TorchRec's ``compute_auc`` sorts
    without grouping ties, so constant scores give 0 or 1 by row order; this gives 0.5.
    Pass logits rather than probabilities: the sigmoid rounds large logits to equal
    values (spurious ties) while the ranking is the same.

    Args:
        scores (torch.Tensor): (N,) any monotone score (logit, probability, log-probability).
        labels (torch.Tensor): (N,) 0/1.
        weights (Optional[torch.Tensor]): (N,) non-negative; 0 leaves a sample out.
            Default: all 1.

    Returns:
        Optional[float]: the AUC, or None when it is undefined (no positive or no negative
        weight).
    """
    s = scores.detach().reshape(-1).double()
    y = labels.detach().reshape(-1).double()
    w = torch.ones_like(s) if weights is None else weights.detach().reshape(-1).double()
    keep = w > 0
    s, y, w = s[keep], y[keep], w[keep]
    uniq, group = torch.unique(s, sorted=True, return_inverse=True)
    pos = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, group, w * y)
    neg = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, group, w * (1 - y))
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if total_pos <= 0 or total_neg <= 0:
        return None
    neg_below = torch.cumsum(neg, 0) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


def normalized_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """Normalized entropy (He et al. 2014, as TorchRec's ``NEMetric``): the weighted mean
    log loss over the entropy of the weighted mean label.

    The log loss comes from the logits (``-y logsigmoid(x) - (1 - y) logsigmoid(-x)``),
    exact where a probability would round to 0 or 1 (TorchRec's ``compute_cross_entropy``
    clamps probabilities instead); importing ``torchrec.metrics`` also pulls in
    torchmetrics, a quarter of ``fit``'s import time, for these two lines.

    Args:
        logits (torch.Tensor): (N,) float64 logits.
        labels (torch.Tensor): (N,) 0/1.
        weights (torch.Tensor): (N,) non-negative; both classes must have weight.

    Returns:
        float: NE (1.0: no better than predicting the mean label).
    """
    ce = -(labels * F.logsigmoid(logits) + (1 - labels) * F.logsigmoid(-logits))
    total = weights.sum()
    mean_ce = (torch.where(weights > 0, ce * weights, torch.zeros_like(ce))).sum() / total
    p = (labels * weights).sum() / total
    baseline = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
    return float(mean_ce / baseline)


def task_metrics(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    task_names: List[str],
    task_types: List[str],
) -> Dict[str, Dict[str, Any]]:
    """Exact metrics of a whole evaluation set, over each task's sample space.

    Binary tasks get AUC (:func:`binary_auc`: exact, ties counted 1/2, over all samples,
    not a window) and normalized entropy; regression tasks get MSE. ``count`` is the
    number of samples in the task's sample space. A metric that is undefined on the data
    (AUC with one class, anything on no sample) is None, and ``note`` says why.

    Args:
        outputs (torch.Tensor): (N, K) logits or values.
        labels (torch.Tensor): (N, K).
        masks (torch.Tensor): (N, K) sample-space weights.
        task_names (List[str]): K names.
        task_types (List[str]): K types.

    Returns:
        Dict[str, Dict[str, Any]]: ``{task: {"auc"|"mse": ..., "count": ...}}``.
    """
    result: Dict[str, Dict[str, Any]] = {}
    for k, (name, kind) in enumerate(zip(task_names, task_types)):
        w = masks[:, k].double()
        y = labels[:, k].double()
        count = int((w > 0).sum().item())
        entry: Dict[str, Any] = {"count": count}
        if kind == "binary":
            logit = outputs[:, k].double()
            entry["auc"] = binary_auc(logit, y, w)
            pos = float((y * w).sum())
            neg = float(w.sum()) - pos
            entry["ne"] = normalized_entropy(logit, y, w) if count and pos > 0 and neg > 0 else None
            if not count:
                entry["note"] = "no sample in the task's sample space: AUC and NE undefined"
            elif entry["auc"] is None:
                only = "positives" if pos > 0 else "negatives"
                entry["note"] = f"only {only} ({count}): AUC and NE undefined"
        else:
            err = (outputs[:, k].double() - y) ** 2
            if count:
                entry["mse"] = float(
                    torch.where(w > 0, err * w, torch.zeros_like(err)).sum() / w.sum()
                )
            else:
                entry["mse"] = None
                entry["note"] = "no sample in the task's sample space: MSE undefined"
        result[name] = entry
    return result


def format_metric(value: Optional[float]) -> str:
    """A metric for a log line or table: 4 decimals, ``n/a`` when undefined."""
    return "n/a" if value is None else f"{value:.4f}"
