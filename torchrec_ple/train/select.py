"""Model selection over epochs (``train.select``) and early stopping (``train.early_stopping``).

Everything here is a pure function of the run's history (one entry per finished epoch,
with its validation metrics), so a resumed run reaches the same best epoch and the same
early-stopping verdict as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from torchrec_ple.spec.schema import (
    HIGHER_IS_BETTER,
    EarlyStoppingSpec,
    SelectSpec,
    TaskSpec,
)

__all__ = ["best_entry", "describe_select", "early_stop_reason", "select_score", "select_terms"]


def select_terms(select: SelectSpec, tasks: Sequence[TaskSpec]) -> List[Tuple[str, str, float]]:
    """``(task, metric, weight)`` of each term of the score, in spec task order.

    Args:
        select (SelectSpec): the validated ``train.select``.
        tasks (Sequence[TaskSpec]): the spec's tasks.
    """
    names = list(select.weights) or list(select.metric)
    order = {t.name: i for i, t in enumerate(tasks)}
    types = {t.name: t.type for t in tasks}
    terms = []
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        default = "auc" if types.get(name) == "binary" else "mse"
        terms.append((name, select.metric.get(name, default), float(select.weights.get(name, 1))))
    return terms


def describe_select(select: SelectSpec, tasks: Sequence[TaskSpec]) -> str:
    """The score in words, e.g. ``cvr auc`` or ``0.5 ctr auc + 0.5 cvr auc - 0.1 y2 mse``."""
    terms = select_terms(select, tasks)
    if len(terms) == 1 and terms[0][2] == 1 and HIGHER_IS_BETTER[terms[0][1]]:
        return f"{terms[0][0]} {terms[0][1]}"
    parts = []
    for i, (name, metric, w) in enumerate(terms):
        sign = "+" if HIGHER_IS_BETTER[metric] else "-"
        lead = ("" if sign == "+" else "-") if i == 0 else f" {sign} "
        parts.append(f"{lead}{w:g} {name} {metric}")
    return "".join(parts)


def select_score(
    select: SelectSpec, tasks: Sequence[TaskSpec], validation: Dict[str, Dict[str, Any]]
) -> Optional[float]:
    """The epoch's score (higher is better), or None when a metric it needs is undefined.

    Args:
        select (SelectSpec): the validated ``train.select``.
        tasks (Sequence[TaskSpec]): the spec's tasks.
        validation (Dict[str, Dict[str, Any]]): the epoch's per-task metrics.
    """
    score = 0.0
    for name, metric, w in select_terms(select, tasks):
        value = validation.get(name, {}).get(metric)
        if value is None:
            return None
        score += w * (value if HIGHER_IS_BETTER[metric] else -value)
    return score


def best_entry(
    history: Sequence[Dict[str, Any]], select: SelectSpec, tasks: Sequence[TaskSpec]
) -> Optional[Dict[str, Any]]:
    """The history entry with the highest score (the earliest of ties), or None."""
    best, best_score = None, None
    for entry in history:
        score = select_score(select, tasks, entry.get("validation", {}))
        if score is not None and (best_score is None or score > best_score):
            best, best_score = entry, score
    return best


def early_stop_reason(
    history: Sequence[Dict[str, Any]],
    select: SelectSpec,
    tasks: Sequence[TaskSpec],
    early: Optional[EarlyStoppingSpec],
) -> Optional[str]:
    """Why training should stop after the last epoch of ``history``, or None to go on.

    An epoch improves when its score exceeds the best earlier score by more than
    ``min_delta`` (an undefined score never improves); training stops after ``patience``
    epochs in a row without an improvement.
    """
    if early is None or not history:
        return None
    reference: Optional[float] = None
    ref_epoch, waited = None, 0
    for entry in history:
        score = select_score(select, tasks, entry.get("validation", {}))
        if score is not None and (reference is None or score > reference + early.min_delta):
            reference, ref_epoch, waited = score, entry["epoch"], 0
        else:
            waited += 1
    if waited < early.patience:
        return None
    what = describe_select(select, tasks)
    since = (
        f"since epoch {ref_epoch} ({reference:.4f})"
        if reference is not None
        else "(undefined in every epoch)"
    )
    return (
        f"the select score ({what}) has not improved by more than min_delta="
        f"{early.min_delta:g} for {waited} epochs {since}; patience {early.patience}"
    )
