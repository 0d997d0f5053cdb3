"""A run's history (one entry per finished epoch): its log line, the best epoch and its
checkpoint (``train.select``), and whether a run has anything left to train."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.checkpoint import TRAINER_STATE, checkpoint_name, read_best, write_best
from torchrec_ple.train.metrics import format_metric
from torchrec_ple.train.run_dir import RunDir
from torchrec_ple.train.select import best_entry, describe_select, early_stop_reason, select_score

__all__ = [
    "best_line",
    "best_summary",
    "finished_reason",
    "finished_run",
    "format_epoch",
    "record_best",
    "saved_early_stop",
    "score_text",
]


def format_epoch(entry: Dict[str, Any]) -> str:
    """``epoch 1  ctr auc=0.7012 (n=500)  ...``: an epoch's validation, one line."""
    parts = [f"epoch {entry['epoch']}"]
    for name, m in entry.get("validation", {}).items():
        metric = "auc" if "auc" in m else "mse"
        parts.append(f"{name} {metric}={format_metric(m[metric])} (n={m['count']})")
        if m.get("note"):
            parts.append(f"[{name}: {m['note']}]")
    return "  ".join(parts)


def finished_reason(
    spec: Spec, history: List[Dict[str, Any]], epoch: int, batch: int, step: int
) -> Optional[str]:
    """Why a run at this position has nothing left to train, or None."""
    if epoch >= spec.train.epochs:
        return f"all {spec.train.epochs} epochs are done (step {step})"
    if spec.train.max_steps is not None and step >= spec.train.max_steps:
        return f"train.max_steps={spec.train.max_steps} was reached (step {step})"
    if spec.train.select is not None and batch == 0 and history:
        reason = early_stop_reason(
            history, spec.train.select, spec.tasks, spec.train.early_stopping
        )
        if reason is not None:
            return f"it stopped early after epoch {history[-1]['epoch']}: {reason}"
    return None


def finished_run(
    spec: Spec, resume_from: Path, run: RunDir
) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(the line to log, the run's metrics.json) when ``--resume`` finds nothing to train and
    the run's metrics are written; None otherwise (then fit loads the data and goes on)."""
    saved = RunDir.trainer_state(resume_from)
    metrics = run.read_metrics()
    if saved is None or metrics is None:
        return None
    reason = finished_reason(
        spec,
        saved.get("history", []),
        int(saved.get("epoch", 0)),
        int(saved.get("batch_in_epoch", 0)),
        int(saved.get("step", 0)),
    )
    if reason is None:
        return None
    more = (
        "raise train.early_stopping.patience to train on"
        if "stopped early" in reason
        else "raise train.epochs (e.g. --set train.epochs=N) to train on"
    )
    return (
        f"resume: the run in {run.path} is finished: {reason}; nothing to train ({more})",
        metrics,
    )


def saved_early_stop(spec: Spec, history: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The early stop a resumed, finished run had made (for metrics.json)."""
    select = spec.train.select
    if select is None or not history or history[-1]["epoch"] + 1 >= spec.train.epochs:
        return None
    reason = early_stop_reason(history, select, spec.tasks, spec.train.early_stopping)
    if reason is None:
        return None
    return {"epoch": history[-1]["epoch"], "step": history[-1]["step"], "reason": reason}


def best_summary(
    spec: Spec, history: List[Dict[str, Any]], ckpt_root: Path
) -> Optional[Dict[str, Any]]:
    """``metrics.json``'s ``best``: the epoch ``train.select`` chose and its checkpoint."""
    select = spec.train.select
    if select is None:
        return None
    entry = best_entry(history, select, spec.tasks)
    if entry is None:
        return None
    name = checkpoint_name(entry["step"])
    return {
        "epoch": entry["epoch"],
        "step": entry["step"],
        "score": select_score(select, spec.tasks, entry["validation"]),
        "select": describe_select(select, spec.tasks),
        "tasks": entry["validation"],
        "checkpoint": name if (ckpt_root / name / TRAINER_STATE).is_file() else None,
    }


def record_best(
    spec: Spec, history: List[Dict[str, Any]], ckpt_root: Path, log: Callable[[str], None]
) -> None:
    """Write ``checkpoints/best.json`` (rank 0) when the best epoch's checkpoint exists."""
    best = best_summary(spec, history, ckpt_root)
    if best is None:
        return
    if best["checkpoint"] is None:
        log(f"the best epoch {best['epoch']} has no checkpoint (step {best['step']}) to keep")
        return
    recorded = read_best(ckpt_root)
    if recorded is None or recorded.get("checkpoint") != best["checkpoint"]:
        write_best(ckpt_root, best)


def score_text(best: Dict[str, Any]) -> str:
    """``cvr auc 0.7214``, or ``0.5 ctr auc + 0.5 cvr auc = 0.7410`` for a sum."""
    select, score = str(best.get("select")), format_metric(best.get("score"))
    return f"{select} = {score}" if " + " in select or " - " in select else f"{select} {score}"


def best_line(best: Dict[str, Any], history: List[Dict[str, Any]]) -> str:
    """The run's last line under ``train.select``: the best epoch and where it is kept."""
    last = history[-1]["epoch"] if history else None
    where = (
        f"kept as checkpoints/{best['checkpoint']}"
        if best["checkpoint"]
        else "its checkpoint is gone"
    )
    tail = (
        "the last epoch"
        if best["epoch"] == last
        else f"evaluate, export and predict use it; --checkpoint-step last for epoch {last}"
    )
    return f"best epoch {best['epoch']} (step {best['step']}): {score_text(best)}; {where} ({tail})"
