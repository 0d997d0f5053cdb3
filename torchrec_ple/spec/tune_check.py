"""Checks of a spec's ``tune:`` block (the search space of ``torchrec-ple tune``).

Called by the loader's checker once the block converted, so its problems are located
like every other spec error (``file:line: tune.params[2].low: expected ..., found ...``).
Beyond the block's own shape, every searched key must be a key path ``--set`` accepts, and
every choice and range end must give a spec that loads (a ``model`` key: for every
architecture tuned): a value the spec rejects is reported before any trial trains.
"""

from __future__ import annotations

import copy
import math
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from torchrec_ple.registry import HEADS
from torchrec_ple.spec.convert import Converter, yaml_fields
from torchrec_ple.spec.defaults import before_checks
from torchrec_ple.spec.errors import SpecError, format_value
from torchrec_ple.spec.keys import KeyPath
from torchrec_ple.spec.overrides import apply_override
from torchrec_ple.spec.schema import SELECT_METRICS, Spec, TaskSpec, TuneSpec

if TYPE_CHECKING:  # the checker imports this module: it is imported here only where used
    from torchrec_ple.spec.checker import SpecChecker

__all__ = ["check_tune", "default_objectives", "is_int_range"]

_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# A value to try, and where the tune block writes it.
Probe = Tuple[Any, KeyPath]
# Keys a trial may not set: the architecture is one study each, the block is tune's own.
_NOT_SEARCHABLE = ("model.architecture", "tune")


def default_objectives(tasks: Sequence[TaskSpec]) -> dict:
    """Every task with its primary validation metric: AUC (binary) or MSE (regression)."""
    return {t.name: ("auc" if t.type == "binary" else "mse") for t in tasks}


def is_int_range(low: Any, high: Any, step: Any = None) -> bool:
    """Whether a range samples integers: its ends (and step, if any) are ints."""
    ints = [v for v in (low, high, step) if v is not None]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in ints)


def _number(value: Any) -> Optional[float]:
    """A finite int/float (or YAML 1.1's numeric text such as ``1e-3``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def check_tune(checker: SpecChecker, tune: TuneSpec, tasks: List[TaskSpec]) -> None:
    """Validate ``tune`` against the spec the checker holds; errors go to the checker.

    Args:
        checker (SpecChecker): the checker of the whole spec.
        tune (TuneSpec): the converted block (the numeric text of its ranges is turned
            into numbers afterwards, by :func:`~torchrec_ple.spec.defaults.fill_tune`).
        tasks (List[TaskSpec]): the spec's validated tasks.
    """
    T: KeyPath = ("tune",)
    checker.at_least(T + ("trials",), tune.trials)
    checker.at_least(T + ("startup_trials",), tune.startup_trials, 0)
    checker.at_least(T + ("seed",), tune.seed, 0)
    if tune.prune is not None:
        checker.at_least(T + ("prune", "warmup_epochs"), tune.prune.warmup_epochs, 0)
        checker.at_least(T + ("prune", "min_trials"), tune.prune.min_trials)
    archs: List[Optional[str]] = []
    for i, arch in enumerate(tune.architectures):
        if not checker.choice(T + ("architectures", i), arch, HEADS.names()):
            continue
        if arch in archs:
            checker.err(T + ("architectures", i), "each architecture once", format_value(arch))
        archs.append(arch)
    _check_objectives(checker, tune, tasks)
    if not tune.params:
        checker.err(
            T + ("params",),
            "at least one key path to search",
            "none",
            hint="e.g. params: [{key: train.dense_optimizer.lr, low: 1.0e-4, high: 1.0e-2}]",
        )
    seen: Dict[str, int] = {}
    for i, p in enumerate(tune.params):
        P = T + ("params", i)
        if p.key in seen:
            checker.err(
                P + ("key",), "each key once", repr(p.key), hint=f"also params[{seen[p.key]}]"
            )
            continue
        seen[p.key] = i
        for value, at in _check_shape(checker, p, P) or []:
            # only the model's keys are valid or not depending on the architecture
            per_arch = p.key.startswith("model.") and archs
            for arch in archs if per_arch else [None]:
                if not _check_value(checker, p.key, value, at, arch, tasks):
                    break


def _check_objectives(checker: SpecChecker, tune: TuneSpec, tasks: List[TaskSpec]) -> None:
    types = {t.name: t.type for t in tasks}
    esmm = {t.name for t in tasks if t.esmm}
    for name, metric in tune.objectives.items():
        at = ("tune", "objectives", name)
        if name not in types:
            checker.err(at, "a task name (one of " + ", ".join(types) + ")", format_value(name))
            continue
        allowed = [m for m in SELECT_METRICS[types[name]] if m != "ctcvr_auc" or name in esmm]
        checker.choice(at, metric, allowed)


def _check_shape(checker: SpecChecker, p: Any, P: KeyPath) -> Optional[List[Probe]]:
    """The block of one key: a known key path, choices or a valid range.

    Returns:
        Optional[List[Probe]]: the values whose spec must load (every choice, or both
        ends of a range, as numbers) with where they are written; None when unsound.
    """
    K = P + ("key",)
    if any(p.key == k or p.key.startswith(k + ".") for k in _NOT_SEARCHABLE):
        hint = "list architectures in tune.architectures" if p.key.startswith("model") else None
        checker.err(
            K, "a key path other than " + ", ".join(_NOT_SEARCHABLE), repr(p.key), hint=hint
        )
        return None
    top = _top(p.key)
    try:  # the path is walked from its section: copying that one is enough
        apply_override({top: copy.deepcopy(checker.raw.get(top))}, p.key, None, set())
    except SpecError as e:
        checker.err(K, e.expected, e.found, did_you_mean=e.did_you_mean, hint=f"at {e.key}")
        return None
    if p.choices is not None:
        if p.low is not None or p.high is not None:
            checker.err(P, "either choices or low/high", "both")
            return None
        if not p.choices:
            checker.err(P + ("choices",), "a non-empty list", "list []")
            return None
        return [(v, P + ("choices", i)) for i, v in enumerate(p.choices)]
    ends = _check_range(checker, p, P)
    if ends is None:
        return None
    return [(ends[0], P + ("low",)), (ends[1], P + ("high",))]


def _check_range(checker: SpecChecker, p: Any, P: KeyPath) -> Optional[Tuple[Any, Any]]:
    """A range's ends and step are finite numbers, ``low < high``, a log range positive.

    Returns:
        Optional[Tuple[Any, Any]]: ``(low, high)`` as numbers (numeric text, which YAML
        1.1 makes of ``1e-3``, as floats), or None when the range is unsound.
    """
    nums: Dict[str, Any] = {}
    for name in ("low", "high", "step"):
        value = getattr(p, name)
        if value is None and name != "step":
            checker.err(P + (name,), "a number (or give choices)", "nothing")
        elif value is not None and _number(value) is None:
            checker.err(P + (name,), "a finite number", format_value(value))
        else:
            nums[name] = float(value) if isinstance(value, str) else value
    if len(nums) < 3:
        return None
    low, high, step = nums["low"], nums["high"], nums["step"]
    if not low < high:
        checker.err(P + ("high",), f"a number > low ({low})", format_value(high))
        return None
    if p.log and low <= 0:
        checker.err(P + ("low",), "a number > 0 (log: true)", format_value(low))
        return None
    if step is not None and (step <= 0 or p.log):
        found = "log: true beside it" if p.log else format_value(step)
        checker.err(P + ("step",), "a number > 0, without log", found)
        return None
    return low, high


def _top(key: str) -> str:
    """``tasks[1].weight.decay`` -> ``tasks``."""
    return key.split(".")[0].split("[")[0]


# Sections a probe checks alone (every load of a spec runs the probes: they must be cheap);
# a key of another section rebuilds the whole spec.
_ALONE = ("model", "train", "tasks")


def _section_errors(sub: SpecChecker, top: str, section: Any, tasks: List[TaskSpec]) -> None:
    """Check one converted section of a probe, as the checker's ``build`` would."""
    before_checks({top: section}, sub)
    if top == "model":
        sub.check_model(section)
    elif top == "tasks":
        sub.check_tasks(section)
    else:
        sub.check_train(section)
        if not sub.errors:
            sub.check_select(section, tasks, None)


def _check_value(
    checker: SpecChecker,
    key: str,
    value: Any,
    at: KeyPath,
    arch: Optional[str],
    tasks: List[TaskSpec],
) -> bool:
    """Report ``value`` at ``at`` when the spec with ``key`` set to it does not load.

    A key of a section of ``_ALONE`` is checked on its section alone; another key rebuilds
    the whole spec. True when it loads.
    """
    from torchrec_ple.spec.checker import SpecChecker

    raw = {k: v for k, v in checker.raw.items() if k != "tune"}
    top = _top(key)
    if top in _ALONE:
        raw = {top: copy.deepcopy(raw.get(top))}
    else:
        raw = copy.deepcopy(raw)
    overridden: set = set()
    try:
        if arch is not None:
            apply_override(raw, "model.architecture", arch, overridden)
        apply_override(raw, key, value, overridden)
    except SpecError as e:  # e.g. an index past the end of a list
        checker.err(at, e.expected, e.found, hint=f"at {e.key}")
        return False
    sub = SpecChecker(raw, {}, overridden, None, checker.base)
    if top in _ALONE:
        section = Converter(sub).convert(raw[top], yaml_fields(Spec)[top][1], (top,))
        if not sub.errors:
            _section_errors(sub, top, section, tasks)
    else:
        sub.build()
    if not sub.errors:
        return True
    e = sub.errors[0]
    what = f"{e.key}: expected {e.expected}" + (f", found {e.found}" if e.found else "")
    where = f" for {arch}" if arch is not None else ""
    checker.err(at, f"a value the spec accepts{where}", f"{format_value(value)} ({what})")
    return False
