"""Checks of the ``tasks:`` section and label leaks into features."""

from __future__ import annotations

from typing import Any, Dict, List

from torchrec_ple.spec.check_base import Checks
from torchrec_ple.spec.convert import BAD, is_scalar
from torchrec_ple.spec.errors import format_value
from torchrec_ple.spec.keys import KeyPath, close_match
from torchrec_ple.spec.schema import (
    ON_INVALID_LABEL,
    TASK_TYPES,
    FeatureSpec,
    TaskSpec,
)


class TaskChecks(Checks):
    """Checks of the ``tasks:`` section and label leaks into features."""

    def check_tasks(self, tasks: List[Any]) -> None:
        if not tasks:
            self.err(("tasks",), "at least one task", "list []")
            return
        good = [(i, t) for i, t in enumerate(tasks) if t is not BAD]
        for i, t in good:
            self.check_task(t, ("tasks", i))
        seen: Dict[str, int] = {}
        for i, t in good:
            if t.name in seen:
                hint = f"already the name of tasks[{seen[t.name]}]"
                self.err(
                    ("tasks", i, "name"), "a unique task name", format_value(t.name), hint=hint
                )
            seen.setdefault(t.name, i)
        by_name = {t.name: t for _, t in good}
        for i, t in good:
            if t.esmm is None:
                continue
            P = ("tasks", i, "esmm")
            parent = by_name.get(t.esmm)
            if parent is None or parent is t:
                others = [n for n in by_name if n != t.name]
                self.err(
                    P,
                    "the name of another (binary CTR) task",
                    format_value(t.esmm),
                    did_you_mean=close_match(t.esmm, others),
                )
            elif t.type != "binary" or parent.type != "binary":
                self.err(P, "ESMM between two binary tasks", f"{t.type} task on {parent.type} task")
            elif parent.esmm is not None:
                self.err(P, "a task that is not itself trained through ESMM", format_value(t.esmm))

    def check_task(self, t: TaskSpec, P: KeyPath) -> None:
        if not t.name:
            self.err(P + ("name",), "a non-empty name", "''")
        if not t.label:
            self.err(P + ("label",), "a non-empty label column", "''")
        self.choice(P + ("type",), t.type, TASK_TYPES)
        if t.positive is not None:
            if t.type != "binary":
                self.err(
                    P + ("positive",),
                    "no positive on a regression task (binary only)",
                    format_value(t.positive),
                )
            elif not t.positive or not all(is_scalar(v) for v in t.positive):
                self.err(
                    P + ("positive",), "a non-empty list of plain values", format_value(t.positive)
                )
        ss, S = t.sample_space, P + ("sample_space",)
        if ss is not None:
            if not ss.column:
                self.err(S + ("column",), "a non-empty column name", "''")
            conds = [
                k
                for k, on in (
                    ("equals", ss.equals is not None),
                    ("in", ss.in_ is not None),
                    ("not_null", ss.not_null),
                )
                if on
            ]
            if len(conds) != 1:
                self.err(
                    S, "exactly one of equals, in, not_null: true", " and ".join(conds) or "none"
                )
            elif ss.equals is not None and not is_scalar(ss.equals):
                self.err(
                    S + ("equals",), "a plain value (str, number or bool)", format_value(ss.equals)
                )
            elif ss.in_ is not None and (not ss.in_ or not all(is_scalar(v) for v in ss.in_)):
                self.err(S + ("in",), "a non-empty list of plain values", format_value(ss.in_))
        if self.choice(P + ("on_invalid",), t.on_invalid, ON_INVALID_LABEL):
            if t.on_invalid != "error" and (t.type != "binary" or t.positive is not None):
                self.err(
                    P + ("on_invalid",),
                    "no on_invalid on a regression task or with positive (binary 0/1 labels only)",
                    format_value(t.on_invalid),
                )
        w, W = t.weight, P + ("weight",)
        self.within(W + ("decay",), 0 < w.decay <= 1, "a number in (0, 1]", w.decay)
        self.within(W + ("initial",), w.initial >= 0, "a number >= 0", w.initial)

    def check_leaks(self, features: List[FeatureSpec], tasks: List[TaskSpec]) -> None:
        labels = {}
        for t in tasks:
            labels.setdefault(t.label, t.name)
        for i, f in enumerate(features):
            if f.column in labels:
                hint = f"label of task '{labels[f.column]}' leaks into inputs"
                self.err(
                    self.column_path(i),
                    "a column that is not a task label",
                    format_value(f.column),
                    hint=hint,
                )
