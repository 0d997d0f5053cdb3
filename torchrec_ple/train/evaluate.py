"""Evaluate a fitted run (``evaluate``): one of its checkpoints on the spec's data or on a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml

from torchrec_ple.data.pipeline import open_split
from torchrec_ple.data.readers.files import FilesReader
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.fit_data import Split
from torchrec_ple.train.run_dir import RunDir
from torchrec_ple.train.scoring import evaluate_encoded
from torchrec_ple.train.state import TrainState, build_state

__all__ = ["evaluate", "load_run_spec", "resolve_checkpoint"]


def evaluate(
    spec: Optional[Spec],
    checkpoint: Path,
    data: str = "validation",
    input_path: Optional[Path] = None,
    which: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> Dict[str, Any]:
    """Evaluate a fitted run directory (``fit``'s ``--out``) on the spec's data.

    Args:
        spec (Optional[Spec]): the spec (its data section says what to evaluate); None
            reads the run's saved ``spec.yaml`` (with ``overrides`` applied).
        checkpoint (Path): the run directory holding ``transforms.json`` and
            ``checkpoints/``, or one of its checkpoints.
        data (str): ``validation`` or ``train``. Default: validation.
        input_path (Optional[Path]): evaluate these rows instead (Parquet or CSV, with the
            label columns; CSV options of the spec's validation file). Default: None.
        which (Optional[str]): the run's checkpoint: ``best``, ``last``, a step, or None
            (the best when the run has one, else the last; see :meth:`RunDir.checkpoint`).
        overrides (Sequence[str]): ``--set`` overrides of the saved spec (``spec`` None).

    Returns:
        Dict[str, Any]: ``{"tasks", "rows", "checkpoint"}``; ``checkpoint`` says which
        (see :meth:`RunDir.describe`).
    """
    ctx = init_distributed(spec.train.dist_timeout_s if spec is not None else None)
    run, ckpt = RunDir.locate(Path(checkpoint), which)
    if spec is None:
        spec = run.load_spec(overrides)
    transforms = FeatureTransforms.load(spec, run.transforms_file)
    state = build_state(spec, transforms, ctx)
    run.load_sharded(ckpt, state.model)
    used = {"path": str(ckpt), "description": run.describe(ckpt)}
    split, rows = _evaluation_split(spec, transforms, data, input_path, state)
    return {"tasks": evaluate_encoded(spec, state, split), "rows": rows, "checkpoint": used}


def _evaluation_split(
    spec: Spec,
    transforms: FeatureTransforms,
    data: str,
    input_path: Optional[Path],
    state: TrainState,
) -> tuple[Split, int]:
    """The split ``evaluate`` scores (the spec's ``data`` split, or the rows of
    ``input_path``, read as the spec's validation file) and the rows read."""
    ctx = state.ctx
    reader = None
    if input_path is not None:
        from torchrec_ple.serving.predict import input_file_spec

        reader = FilesReader(spec, "validation", file=input_file_spec(spec, input_path))
        data = "validation"
    split = open_split(spec, data, transforms, ctx.rank, ctx.world_size, reader)
    if split is None:  # a held-out split of no rows (validation_fraction 0): no row to score
        return transforms.encode(load_tables(spec)[1]), 0
    return split, split.rows_read


def resolve_checkpoint(path: Path, which: Optional[str] = None) -> tuple[Path, Path]:
    """(checkpoint dir, transforms.json) from a run directory or one checkpoint directory
    (see :meth:`RunDir.locate`)."""
    run, ckpt = RunDir.locate(Path(path), which)
    return ckpt, run.transforms_file


def load_run_spec(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The resolved spec mapping saved by :func:`fit`, if present."""
    p = RunDir(run_dir).spec_file
    return yaml.safe_load(p.read_text()) if p.is_file() else None
