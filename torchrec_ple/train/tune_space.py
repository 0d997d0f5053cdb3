"""The search space and objectives of ``torchrec-ple tune``, and the spec of one trial.

A trial's spec is the user's spec with the sampled values applied exactly as ``--set``
applies them (:func:`~torchrec_ple.spec.loader.load_spec` overrides), after the user's own
``--set``, the trial's architecture and compare's defaults (MMoE gets as many experts per
level as PLE, unless the expert counts are searched). The ``tune:`` block is dropped from it,
so a trial's folder, and ``best.yaml``, hold a spec ``fit`` runs as it is.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torchrec_ple.spec import load_spec
from torchrec_ple.spec.schema import HIGHER_IS_BETTER, Spec, TuneParamSpec
from torchrec_ple.spec.tune_check import default_objectives, is_int_range

__all__ = [
    "Objective",
    "decode_params",
    "describe_space",
    "objectives",
    "suggest",
    "trial_overrides",
    "trial_spec",
    "value_text",
]

Override = Tuple[str, Any]


@dataclass(frozen=True)
class Objective:
    """One objective of the study: a task's validation metric at the trial's best epoch.

    Args:
        task (str): the task name.
        metric (str): ``auc``, ``ne`` or ``mse``.
    """

    task: str
    metric: str

    @property
    def maximize(self) -> bool:
        """Whether higher is better (AUC), else lower (NE, MSE)."""
        return HIGHER_IS_BETTER[self.metric]

    @property
    def label(self) -> str:
        """``income auc``."""
        return f"{self.task} {self.metric}"

    @property
    def column(self) -> str:
        """``income_auc`` (a CSV column)."""
        return f"{self.task}_{self.metric}"


def objectives(spec: Spec) -> List[Objective]:
    """The study's objectives in task order: ``tune.objectives``, else every task."""
    chosen = (spec.tune.objectives if spec.tune else None) or default_objectives(spec.tasks)
    return [Objective(t.name, chosen[t.name]) for t in spec.tasks if t.name in chosen]


def value_text(value: Any) -> str:
    """A value as ``--set`` takes it: ``0.003``, ``[64,32]``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)) or value is None:
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _encoded(choices: Sequence[Any]) -> List[Any]:
    # Optuna's categorical values are scalars: lists and mappings travel as JSON text
    return [c if isinstance(c, (bool, int, float, str)) else value_text(c) for c in choices]


def suggest(trial: Any, params: Sequence[TuneParamSpec]) -> List[Override]:
    """Sample every searched key for an Optuna trial: ``[(key path, value), ...]``.

    The key path is the Optuna parameter's name. An enqueued trial (a retry) gets its
    fixed values back.

    Args:
        trial (optuna.Trial): the trial being run.
        params (Sequence[TuneParamSpec]): ``tune.params``.
    """
    out: List[Override] = []
    for p in params:
        key = p.key
        if p.choices is not None:
            encoded = _encoded(p.choices)
            picked = trial.suggest_categorical(key, encoded)
            out.append((key, p.choices[encoded.index(picked)]))
        elif is_int_range(p.low, p.high, p.step):
            step = p.step or 1
            out.append((key, trial.suggest_int(key, p.low, p.high, step=step, log=p.log)))
        else:
            value = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
            out.append((key, value))
    return out


def decode_params(params: Dict[str, Any], space: Sequence[TuneParamSpec]) -> List[Override]:
    """A finished trial's stored params as ``(key path, spec value)`` pairs, in space order."""
    out: List[Override] = []
    for p in space:
        key = p.key
        if key not in params:
            continue
        value = params[key]
        if p.choices is not None and value in _encoded(p.choices):
            value = p.choices[_encoded(p.choices).index(value)]
        out.append((key, value))
    return out


def describe_space(space: Sequence[TuneParamSpec]) -> List[str]:
    """One line per searched key: ``train.dense_optimizer.lr: 0.0001..0.01 (log)``."""
    lines = []
    for p in space:
        key = p.key
        if p.choices is not None:
            lines.append(f"{key}: one of {', '.join(value_text(c) for c in p.choices)}")
            continue
        kind = "int " if is_int_range(p.low, p.high, p.step) else ""
        extra = " (log)" if p.log else (f" (step {value_text(p.step)})" if p.step else "")
        lines.append(f"{key}: {kind}{value_text(p.low)}..{value_text(p.high)}{extra}")
    return lines


def _select_override(base: Spec, objs: Sequence[Objective]) -> List[Override]:
    """Without ``train.select``, a trial's best epoch is the one with the best equal-weight
    sum of its objectives (AUC up, MSE down): the run folder keeps and serves that epoch."""
    if base.train.select is not None:
        return []
    select = {"weights": {o.task: 1.0 for o in objs}, "metric": {o.task: o.metric for o in objs}}
    return [("train.select", select)]


def trial_overrides(base: Spec, arch: str, sampled: Sequence[Override]) -> List[Override]:
    """What a trial sets on top of the user's ``--set``: best-epoch selection, the
    architecture (and compare's expert matching), then the sampled values."""
    from torchrec_ple.train.compare import _run_overrides

    searched = {k for k, _ in sampled}
    arch_ov = [
        (k, v) for k, v in _run_overrides(base, arch, 0, match_experts=True) if k not in searched
    ]
    return _select_override(base, objectives(base)) + arch_ov + list(sampled)


def quiet_defaults() -> List[Override]:
    """Defaults of a trial that the user's ``--set`` may still change."""
    return [("train.progress", False), ("train.tensorboard", False)]


def trial_spec(
    spec_path: Path,
    user_overrides: Sequence[Any],
    base: Spec,
    arch: str,
    sampled: Sequence[Override],
) -> Spec:
    """The validated spec of one trial, without its ``tune:`` block.

    Raises:
        SpecError: the sampled values make a spec that does not load (the trial fails).
    """
    overrides = quiet_defaults() + list(user_overrides) + trial_overrides(base, arch, sampled)
    spec = load_spec(spec_path, overrides)
    raw = {k: v for k, v in spec.raw.items() if k != "tune"}
    return dataclasses.replace(spec, tune=None, raw=raw)


def base_spec(spec_path: Path, user_overrides: Sequence[Any]) -> Spec:
    """The user's spec with ``--set`` applied; it must have a ``tune:`` block.

    Raises:
        SpecError: the spec does not load, or has no ``tune:`` block.
    """
    from torchrec_ple.spec import SpecError

    spec = load_spec(spec_path, user_overrides)
    if spec.tune is None:
        raise SpecError(
            "tune",
            "a tune: block (the search space)",
            "none",
            file=str(spec_path),
            hint="e.g. tune: {params: [{key: train.dense_optimizer.lr, low: 1.0e-4, high: 1.0e-2}]}",
        )
    return spec


def architectures(base: Spec, given: Optional[Sequence[str]]) -> List[str]:
    """``--architectures``, else ``tune.architectures``, else the spec's architecture."""
    if given:
        return list(given)
    assert base.tune is not None
    return list(base.tune.architectures) or [base.model.architecture]
