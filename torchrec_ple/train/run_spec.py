"""A run folder's ``spec.yaml``: what ``fit`` writes there, and what may change on resume.

``--resume`` needs the spec the run was trained with: a changed key is named (see
:data:`RESUMABLE_KEYS` for the keys that may change).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from torchrec_ple.spec.errors import SpecError, format_value

__all__ = ["RESUMABLE_KEYS", "RESUMABLE_SECTIONS", "saved_spec_mapping", "spec_changes"]

# Keys that may differ between a run's spec.yaml and the spec of its ``--resume``: how long
# to train, how it is logged and checkpointed, where the (same) data now lives and how the
# tables are placed (DCP reshards them). Any other change would silently train another
# model from the checkpoint (or fail to load it), so it is refused. ``[*]`` is any index.
RESUMABLE_KEYS: Tuple[str, ...] = (
    "train.epochs",
    "train.max_steps",
    "train.progress",
    "train.tensorboard",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_threads",
    "train.eval_batch_size",
    "train.on_nonfinite_loss",
    "train.max_skipped_steps",
    # when to stop early (its verdict is recomputed from the run's history on resume)
    "train.early_stopping",
    "train.early_stopping.patience",
    "train.early_stopping.min_delta",
    "data.train.path",
    "data.validation.path",
    "data.num_workers",
    "features[*].embedding.sharding",
    # where the same weights live and how they are computed (a resume may move devices)
    "features[*].embedding.compute_kernel",
    "features[*].embedding.cache_load_factor",
    "train.precision",
    "train.planner",
    "train.planner.hbm_cap_gb",
    "train.planner.ddr_cap_gb",
    "train.dist_timeout_s",
)
# whole sections a resume may change: fit ignores ``tune:`` (the search space of ``tune``)
RESUMABLE_SECTIONS: Tuple[str, ...] = ("tune",)
_MAX_NAMED_CHANGES = 6


def _norm_key(key: str) -> str:
    return re.sub(r"\[\d+\]", "[*]", key)


def _resolved(spec: Any) -> Dict[str, Any]:
    from torchrec_ple.spec.loader import plain

    d = dataclasses.asdict(spec)
    d.pop("path", None)
    d.pop("raw", None)
    return plain(d)


def _show(value: Any) -> str:
    text = format_value(value)
    for kind in ("list ", "mapping "):
        if text.startswith(kind):
            return text[len(kind) :]
    return text


def _diff(run: Any, now: Any, key: str, out: List[Tuple[str, str]]) -> None:
    if isinstance(run, dict) and isinstance(now, dict):
        for k in list(run) + [k for k in now if k not in run]:
            name = k[:-1] if k.endswith("_") else k  # `in_` is `in:` in YAML
            sub = f"{key}.{name}" if key else name
            if k not in run:
                out.append((sub, f"run has no {sub}, spec has {_show(now[k])}"))
            elif k not in now:
                out.append((sub, f"run has {_show(run[k])}, spec has no {sub}"))
            else:
                _diff(run[k], now[k], sub, out)
        return
    if (
        isinstance(run, list)
        and isinstance(now, list)
        and len(run) == len(now)
        and any(isinstance(v, dict) for v in run)
    ):
        for i, (a, b) in enumerate(zip(run, now)):
            _diff(a, b, f"{key}[{i}]", out)
        return
    if isinstance(run, list) and isinstance(now, list) and any(isinstance(v, dict) for v in run):
        out.append((key, f"run has {len(run)} entries, spec has {len(now)}"))
    elif run != now:
        out.append((key, f"run has {_show(run)}, spec has {_show(now)}"))


def spec_changes(spec: Any, saved: Path) -> List[str]:
    """The keys where ``spec`` differs from a run's saved ``spec.yaml``, resumable ones aside.

    Both are compared resolved (defaults filled in), so a default written out is no change.
    A saved spec that no longer parses is compared as written.

    Args:
        spec (Spec): the spec of the ``--resume``.
        saved (Path): the run's ``spec.yaml``.

    Returns:
        List[str]: ``key: run has X, spec has Y`` lines, in spec order.
    """
    from torchrec_ple.spec.loader import parse_spec, plain

    text = saved.read_text(encoding="utf-8")
    try:
        # parsed as if it were the user's file, so relative data paths resolve alike
        run: Any = _resolved(parse_spec(text, spec.path))
        now: Any = _resolved(spec)
    except SpecError:
        run, now = yaml.safe_load(text), plain(spec.raw)
    found: List[Tuple[str, str]] = []
    _diff(run, now, "", found)
    allowed = set(RESUMABLE_KEYS)
    return [
        f"{key}: {what}"
        for key, what in found
        if _norm_key(key) not in allowed
        and re.split(r"[.\[]", key, maxsplit=1)[0] not in RESUMABLE_SECTIONS
    ]


def saved_spec_mapping(spec: Any) -> Dict[str, Any]:
    """The spec mapping a run folder keeps (``spec.yaml``): ``spec.raw`` with every path
    resolved (absolute), so the folder alone evaluates, predicts and exports wherever it
    is read from.

    Args:
        spec (Spec): the validated spec.
    """
    from torchrec_ple.spec.loader import plain

    raw = plain(spec.raw)
    _absolute_paths(spec, raw)
    return raw


def _absolute_paths(obj: Any, raw: Any) -> None:
    """Write the resolved values of ``obj``'s path fields into its YAML mapping ``raw``."""
    from torchrec_ple.spec.schema import Spec

    if not dataclasses.is_dataclass(obj) or not isinstance(raw, dict):
        return
    for f in dataclasses.fields(obj):
        key = f.name[:-1] if f.name.endswith("_") else f.name
        if key not in raw or f.name in ("path", "raw") and isinstance(obj, Spec):
            continue
        value = getattr(obj, f.name)
        if isinstance(value, Path):
            raw[key] = str(value)
        elif dataclasses.is_dataclass(value):
            if isinstance(raw[key], str) and isinstance(getattr(value, "path", None), Path):
                raw[key] = str(value.path)  # the `train: x.parquet` shorthand
            else:
                _absolute_paths(value, raw[key])
        elif isinstance(value, list) and isinstance(raw[key], list):
            for item, sub in zip(value, raw[key]):
                _absolute_paths(item, sub)


def saved_spec_text(spec: Any) -> str:
    """The YAML text of :func:`saved_spec_mapping`."""
    return yaml.safe_dump(saved_spec_mapping(spec), sort_keys=False)


def load_saved_spec(directory: Path, overrides: Any = ()) -> Any:
    """The resolved ``spec.yaml`` a run directory or a model folder holds.

    Data paths in it are not checked (serving needs none of them); ``fit`` saves them
    absolute, so ``evaluate`` finds the run's data from the folder alone.

    Args:
        directory (Path): the run directory or model folder.
        overrides (Sequence[str]): ``key.path=value`` overrides (``--set``). Default: none.

    Returns:
        Spec: the parsed spec.
    """
    from torchrec_ple.spec.errors import DataError
    from torchrec_ple.spec.loader import parse_spec

    path = Path(directory) / "spec.yaml"
    if not path.is_file():
        raise DataError(
            file=str(path), expected="the spec.yaml written by fit or export", found="nothing"
        )
    return parse_spec(path.read_text(encoding="utf-8"), path, overrides)
