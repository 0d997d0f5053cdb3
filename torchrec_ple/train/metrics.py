"""Per-task evaluation metrics, each over the task's own sample space."""

from __future__ import annotations

from typing import Dict, List

import torch
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.ne import compute_cross_entropy, compute_ne


def task_metrics(
    outputs: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    task_names: List[str],
    task_types: List[str],
) -> Dict[str, Dict[str, float]]:
    """Exact metrics of a whole evaluation set, weighting every sample by its mask.

    Binary tasks get AUC (TorchRec's exact weighted AUC over all samples, not a window)
    and normalized entropy; regression tasks get MSE. ``count`` is the number of samples
    in the task's sample space.

    Args:
        outputs (torch.Tensor): (N, K) logits or values.
        labels (torch.Tensor): (N, K).
        masks (torch.Tensor): (N, K) sample-space weights.
        task_names (List[str]): K names.
        task_types (List[str]): K types.

    Returns:
        Dict[str, Dict[str, float]]: ``{task: {"auc"|"mse": ..., "count": ...}}``.
    """
    result: Dict[str, Dict[str, float]] = {}
    for k, (name, kind) in enumerate(zip(task_names, task_types)):
        w = masks[:, k].double()
        y = labels[:, k].double()
        count = int(w.sum().item())
        entry: Dict[str, float] = {"count": count}
        if kind == "binary":
            p = torch.sigmoid(outputs[:, k].double())
            entry["auc"] = float(
                compute_auc(1, [p.view(1, -1)], [y.view(1, -1)], [w.view(1, -1)])[0]
            )
            ce = compute_cross_entropy(y, p, w, eta=1e-12).sum()
            pos = (y * w).sum()
            neg = w.sum() - pos
            entry["ne"] = (
                float(compute_ne(ce, w.sum(), pos, neg, eta=1e-12)) if count else float("nan")
            )
        else:
            err = (outputs[:, k].double() - y) ** 2
            entry["mse"] = float((err * w).sum() / w.sum()) if count else float("nan")
        result[name] = entry
    return result
