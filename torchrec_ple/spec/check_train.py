"""Checks of the ``train:`` section (optimizers, schedules, selection)."""

from __future__ import annotations

from typing import Any, List

from torchrec_ple.registry import LOSS_WEIGHTINGS
from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath, close_match
from torchrec_ple.spec.schema import (
    CPU_EMBEDDING_OPTIMIZERS,
    DENSE_OPTIMIZERS,
    EMBEDDING_OPTIMIZERS,
    LR_DECAYS,
    NONFINITE_LOSS_ACTIONS,
    PRECISIONS,
    PROGRESS_MODES,
    SELECT_METRICS,
    WEIGHT_UNITS,
    DataSpec,
    TaskSpec,
    TrainSpec,
)


def _cuda_available() -> bool:
    # imported lazily (torch, fbgemm): only the CUDA-only optimizers' check needs it
    from torchrec_ple.train.device import cuda_kernels_available

    return cuda_kernels_available()


class TrainChecks(Checks):
    """Checks of the ``train:`` section (optimizers, schedules, selection)."""

    def check_train(self, t: TrainSpec) -> None:
        T: KeyPath = ("train",)
        self.at_least(T + ("batch_size",), t.batch_size)
        self.at_least(T + ("eval_batch_size",), t.eval_batch_size)
        self.at_least(T + ("epochs",), t.epochs)
        self.at_least(T + ("seed",), t.seed, 0)
        self.at_least(T + ("num_threads",), t.num_threads)
        self.at_least(T + ("max_steps",), t.max_steps)
        self.at_least(T + ("checkpoint_every",), t.checkpoint_every)
        self.at_least(T + ("keep_checkpoints",), t.keep_checkpoints)
        self.at_least(T + ("log_every",), t.log_every)
        self.choice(T + ("weight_schedule_unit",), t.weight_schedule_unit, WEIGHT_UNITS)
        self.choice(T + ("loss_weighting",), t.loss_weighting, LOSS_WEIGHTINGS.names())
        self.choice(T + ("on_nonfinite_loss",), t.on_nonfinite_loss, NONFINITE_LOSS_ACTIONS)
        self.choice(T + ("precision",), t.precision, PRECISIONS)
        d = t.dist_timeout_s
        self.within(T + ("dist_timeout_s",), d > 0, "a number of seconds > 0", d)
        for key in ("hbm_cap_gb", "ddr_cap_gb"):
            cap = getattr(t.planner, key)
            if cap is not None:
                self.within(T + ("planner", key), cap > 0, "a number of GiB > 0", cap)
        self.at_least(T + ("max_skipped_steps",), t.max_skipped_steps, 0)
        self.check_schedules(t)
        for key, choices in (
            ("dense_optimizer", DENSE_OPTIMIZERS),
            ("embedding_optimizer", EMBEDDING_OPTIMIZERS),
        ):
            o, op = getattr(t, key), T + (key,)
            self.choice(op + ("type",), o.type, choices)
            self.within(op + ("lr",), o.lr > 0, "a number > 0", o.lr)
            self.within(
                op + ("weight_decay",), o.weight_decay >= 0, "a number >= 0", o.weight_decay
            )
            self.within(op + ("eps",), o.eps > 0, "a number > 0", o.eps)
        opt = t.embedding_optimizer.type
        if opt in ("adagrad", "sgd") and t.embedding_optimizer.weight_decay:
            self.err(
                T + ("embedding_optimizer", "weight_decay"),
                f"0 with embedding_optimizer {opt} (fbgemm's {opt} kernel has no weight decay)",
                format_value(t.embedding_optimizer.weight_decay),
                hint="rowwise_adagrad applies it as an L2 penalty, adam decoupled",
            )
        if (
            opt in EMBEDDING_OPTIMIZERS
            and opt not in CPU_EMBEDDING_OPTIMIZERS
            and not _cuda_available()
        ):
            cpu = ", ".join(CPU_EMBEDDING_OPTIMIZERS)
            self.err(
                T + ("embedding_optimizer", "type"),
                f"one of {cpu} without CUDA (a GPU and the CUDA build of fbgemm-gpu)",
                format_value(opt),
                hint=f"fbgemm's CPU kernels support {cpu}",
            )

    def check_schedules(self, t: TrainSpec) -> None:
        """``progress``, ``early_stopping``, ``lr_schedule`` and ``clip_grad_norm``."""
        T: KeyPath = ("train",)
        if t.progress not in PROGRESS_MODES or not isinstance(t.progress, (bool, str)):
            self.err(T + ("progress",), "true, false or auto", format_value(t.progress))
        if t.clip_grad_norm is not None:
            c = t.clip_grad_norm
            self.within(T + ("clip_grad_norm",), c > 0, "a number > 0", c)
        e, E = t.early_stopping, T + ("early_stopping",)
        if e is not None:
            self.at_least(E + ("patience",), e.patience)
            self.within(E + ("min_delta",), e.min_delta >= 0, "a number >= 0", e.min_delta)
            if t.select is None:
                self.err(
                    E,
                    "train.select beside it (the score early stopping watches)",
                    "no train.select",
                    hint="e.g. select: {metric: {ctr: auc}}",
                )
        s, S = t.lr_schedule, T + ("lr_schedule",)
        if s is not None:
            self.at_least(S + ("warmup_steps",), s.warmup_steps, 0)
            self.choice(S + ("decay",), s.decay, LR_DECAYS)
            r = s.min_lr_ratio
            self.within(S + ("min_lr_ratio",), 0 <= r <= 1, "a number in [0, 1]", r)
            self.within(S + ("gamma",), 0 < s.gamma <= 1, "a number in (0, 1]", s.gamma)
            self.at_least(S + ("step_size",), s.step_size)
            if s.decay == "step" and s.step_size is None:
                self.err(S + ("step_size",), "int >= 1 (required by decay: step)", "nothing")

    def check_select(self, t: TrainSpec, tasks: List[TaskSpec], data: Any) -> None:
        """``train.select`` names tasks of the spec, metrics of their type, and needs
        validation data."""
        sel = t.select
        if sel is None:
            return
        S: KeyPath = ("train", "select")
        types = {task.name: task.type for task in tasks}
        esmm = {task.name for task in tasks if task.esmm}
        for key in ("metric", "weights"):
            for name in getattr(sel, key):
                if name not in types:
                    self.err(
                        S + (key, name),
                        "a task name (one of " + ", ".join(types) + ")",
                        format_value(name),
                        did_you_mean=close_match(name, types),
                    )
        for name, metric in sel.metric.items():
            if name not in types:
                continue
            allowed = [m for m in SELECT_METRICS[types[name]] if m != "ctcvr_auc" or name in esmm]
            if metric not in allowed:
                self.err(
                    S + ("metric", name),
                    f"one of {', '.join(allowed)} (a {types[name]} task)",
                    format_value(metric),
                    did_you_mean=close_match(metric, allowed),
                )
        for name, w in sel.weights.items():
            self.within(S + ("weights", name), w >= 0, "a number >= 0", w)
        if not sel.metric and not sel.weights:
            self.err(
                S,
                "metric (task -> metric) or weights (task -> weight)",
                "neither",
                hint="e.g. select: {metric: {ctr: auc}}",
            )
        elif sel.weights and not any(w > 0 for w in sel.weights.values()):
            self.err(S + ("weights",), "a weight > 0", format_value(sel.weights))
        if isinstance(data, DataSpec) and data.validation is None:
            none = data.streaming or (data.source == "files" and data.validation_fraction == 0)
            if none:
                self.err(
                    S,
                    "validation data to select on (data.validation, or a "
                    "data.validation_fraction > 0)",
                    "none",
                )
