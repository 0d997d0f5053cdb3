"""Unsharded models from DCP checkpoints, and a self-contained exported model folder.

A model folder (``export_model``'s ``out_dir``) holds:

* ``model.pt2``: a ``torch.export`` program of :class:`ServingModel` (``torch.export.save``);
  weights are stored as raw tensor bytes, so :func:`load_exported` needs no pickle of
  arbitrary objects (it checks that before loading);
* ``transforms.json`` and ``spec.yaml``: the fitted transforms and resolved spec of the run;
* ``manifest.json``: input/output contract, task names and types, provenance.

The program's contract (also written to the manifest)::

    scores = program(dense, values, lengths)
    # dense:   (B, D) float32, the encoded numeric features in spec order
    # values:  (N,)   int64, the ids of every sparse key, key-major (key 0's bags first)
    # lengths: (F, B) int64, bag sizes per sparse key and row; N = lengths.sum()
    # scores:  (B, K) float32: probabilities (sigmoid applied) for binary tasks,
    #          values for regression tasks, columns in spec task order
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.models.multitask import MultiTaskModel
from torchrec_ple.serving.model_folder import (
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    PROGRAM_FILE,
    SCRIPT_FILE,
    SPEC_FILE,
    TRANSFORMS_FILE,
    ExportedModel,
    PathLike,
    _quiet_fx_notice,
    check_no_pickle,
    is_model_dir,
    load_exported,
    program_on,
)
from torchrec_ple.spec.errors import DataError, first_line
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import DropMessages
from torchrec_ple.train.run_dir import RunDir, check_out_folder, describe_checkpoint
from torchrec_ple.train.run_spec import load_saved_spec, saved_spec_text

__all__ = [
    "ExportedModel",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "PROGRAM_FILE",
    "SCRIPT_FILE",
    "SPEC_FILE",
    "TRANSFORMS_FILE",
    "ServingModel",
    "check_no_pickle",
    "program_on",
    "check_export_out",
    "export_model",
    "is_model_dir",
    "load_exported",
    "load_saved_spec",
    "load_unsharded",
    "resolve_run",
    "serving_model",
]

logger = logging.getLogger("torchrec_ple")


class ServingModel(nn.Module):
    """A :class:`MultiTaskModel` behind plain-tensor inputs and final-score outputs.

    The KeyedJaggedTensor is built inside from fixed keys, so an exported program has
    only tensor inputs and runs without torchrec types at the call site.

    Args:
        model (MultiTaskModel): the unsharded model.
        keys (List[str]): sparse feature names, in KeyedJaggedTensor key order.
        task_types (List[str]): ``binary`` or ``regression`` per task.

    Example::

        serving = ServingModel(model, ["user", "item"], ["binary", "regression"])
        scores = serving(dense, values, lengths)  # (B, 2): probability, value
    """

    def __init__(self, model: MultiTaskModel, keys: List[str], task_types: List[str]) -> None:
        super().__init__()
        self.model = model
        self._keys: List[str] = list(keys)
        self._has_sparse: bool = model.ebc is not None and len(keys) > 0
        self.register_buffer(
            "_is_binary", torch.tensor([t == "binary" for t in task_types]), persistent=False
        )

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            dense (torch.Tensor): (B, D) float32 encoded numeric features.
            values (torch.Tensor): (N,) int64 ids, key-major.
            lengths (torch.Tensor): (F, B) int64 bag sizes.

        Returns:
            torch.Tensor: (B, K) probabilities (binary tasks) or values (regression).
        """
        if self._has_sparse:
            sparse = KeyedJaggedTensor(keys=self._keys, values=values, lengths=lengths.reshape(-1))
        else:
            sparse = KeyedJaggedTensor.empty(values_dtype=torch.int64)
        out = self.model(dense, sparse)
        return torch.where(self._is_binary, torch.sigmoid(out), out)


# ---------------------------------------------------------------------------- loading runs


def resolve_run(run_dir: PathLike, which: Optional[str] = None) -> Tuple[Path, Path]:
    """(checkpoint directory, transforms.json) of a run directory or one of its checkpoints,
    refusing a checkpoint older than the run's ``transforms.json`` (see
    :meth:`~torchrec_ple.train.run_dir.RunDir.locate`)."""
    run, ckpt = RunDir.locate(Path(run_dir), which, fresh=True)
    return ckpt, run.transforms_file


def load_unsharded(
    spec: Optional[Spec],
    run_dir: PathLike,
    which: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> Tuple[MultiTaskModel, FeatureTransforms]:
    """Build the model unsharded and load a fit run's checkpoint into it (see
    :meth:`~torchrec_ple.train.run_dir.RunDir.load_unsharded`).

    Args:
        spec (Optional[Spec]): the run's spec; ``None`` reads the run's ``spec.yaml``.
        run_dir (PathLike): ``fit``'s output directory, or one ``checkpoints/step_*``.
        which (Optional[str]): the run's checkpoint: ``best``, ``last``, a step, or None
            (the best, else the last).
        device (Union[str, torch.device]): where the loaded model computes (a checkpoint
            written on GPUs loads on CPU and vice versa). Default: ``cpu``.

    Returns:
        Tuple[MultiTaskModel, FeatureTransforms]: the model in eval mode, and the run's
        transforms.
    """
    run, ckpt = RunDir.locate(Path(run_dir), which, fresh=True)
    return run.load_unsharded(spec if spec is not None else run.load_spec(), ckpt, device)


def serving_model(spec: Spec, model: MultiTaskModel) -> ServingModel:
    """Wrap a model for serving (eval mode, on the model's device)."""
    keys = [f.name for f in spec.sparse_features]
    device = next(iter(model.parameters()), torch.empty(0)).device
    return ServingModel(model, keys, [t.type for t in spec.tasks]).eval().to(device)


# ---------------------------------------------------------------------------- export


def example_inputs(spec: Spec, batch_size: int = 3) -> Tuple[torch.Tensor, ...]:
    """Valid (dense, values, lengths) inputs of ``batch_size`` rows, all ids 0.

    Bags have 1 or 2 ids so that no size is 0 or 1 (torch.export specializes those).
    """
    num_keys = len(spec.sparse_features)
    dense = torch.zeros(batch_size, len(spec.dense_features))
    lengths = (torch.arange(num_keys * batch_size) % 2 + 1).reshape(num_keys, batch_size)
    values = torch.zeros(int(lengths.sum()), dtype=torch.int64)
    return dense, values, lengths.to(torch.int64)


def export_program(serving: ServingModel, spec: Spec) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) of a serving model with dynamic batch and id counts.

    The graph holds only ATen ops: loading it needs neither torchrec nor fbgemm.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=2**31 - 2)
    nnz = Dim("nnz", min=0, max=2**40)
    # Without sparse features ``values`` is always empty: static.
    dynamic_shapes = {
        "dense": {0: batch},
        "values": {0: nnz} if spec.sparse_features else None,
        "lengths": {1: batch},
    }
    # TorchRec logs (root logger) that non-strict export of KJT.to_dict is slow: it is a
    # one-off cost at export time, not at inference.
    _quiet_fx_notice()
    quiet = DropMessages("non-strict torch.export KJT to_dict")
    logging.getLogger().addFilter(quiet)
    try:
        with torch.no_grad():
            return torch.export.export(
                serving, example_inputs(spec), dynamic_shapes=dynamic_shapes, strict=False
            )
    finally:
        logging.getLogger().removeFilter(quiet)


def export_model(
    spec: Optional[Spec],
    run_dir: PathLike,
    out_dir: PathLike,
    overwrite: bool = False,
    which: Optional[str] = None,
) -> Path:
    """Write a self-contained, unsharded model folder from a fit run.

    Uses ``torch.export`` (``model.pt2``); only if that fails, TorchScript (``model.ts``),
    with the reason logged and recorded in the manifest. The exported program is checked
    against the eager model before the manifest is written. The folder is written beside
    ``out_dir`` and renamed into place once complete, so a failed export leaves an earlier
    one whole.

    Args:
        spec (Optional[Spec]): the run's spec; ``None`` reads the run's ``spec.yaml``.
        run_dir (PathLike): ``fit``'s output directory (or one of its checkpoints).
        out_dir (PathLike): the model folder to write: new, empty, or (with ``overwrite``)
            an earlier export.
        overwrite (bool): replace an earlier export in ``out_dir``. Default: False.
        which (Optional[str]): the run's checkpoint: ``best``, ``last``, a step, or None
            (the best when the run has one, else the last); the manifest's
            ``checkpoint_choice`` says which. Default: None.

    Returns:
        Path: ``out_dir``.

    Raises:
        DataError: ``out_dir`` is a file, holds other files, or holds an earlier export
            without ``overwrite`` (checked before any work).
    """
    out_dir = Path(out_dir)
    check_export_out(out_dir, overwrite)
    run, ckpt = RunDir.locate(Path(run_dir), which, fresh=True)
    transforms_path = run.transforms_file
    spec_file = None if spec is not None else run.spec_file
    if spec is None:
        spec = run.load_spec()
    model, _ = run.load_unsharded(spec, ckpt)
    serving = serving_model(spec, model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # beside out_dir, on the same filesystem, so the final rename is atomic
    work = out_dir.parent / f".{out_dir.name}.tmp{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _write_model_folder(work, serving, spec, ckpt, transforms_path, spec_file)
        _put_in_place(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


_EXPORT_FILES = (MANIFEST_FILE, PROGRAM_FILE, SCRIPT_FILE, TRANSFORMS_FILE, SPEC_FILE)


def check_export_out(out_dir: Path, overwrite: bool) -> None:
    """Refuse an export folder that would replace anything the user did not ask to replace.

    Args:
        out_dir (Path): ``export --out``.
        overwrite (bool): an earlier export there may be replaced.

    Raises:
        DataError: ``out_dir`` is a file or under one, cannot be written, holds files an
            export does not write (e.g. a run folder), or holds an earlier export and
            ``overwrite`` is off.
    """
    check_out_folder(out_dir)
    if not out_dir.is_dir():
        return
    names = sorted(p.name for p in out_dir.iterdir())
    others = [n for n in names if n not in _EXPORT_FILES]
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise DataError(
            file=str(out_dir),
            expected="a new or empty folder for --out, or an earlier export",
            found=f"a folder holding other files ({shown})",
            hint="pick another --out",
        )
    if names and not overwrite:
        what = "an earlier export" if MANIFEST_FILE in names else "an unfinished export"
        raise DataError(
            file=str(out_dir),
            expected="a new or empty folder for --out",
            found=what,
            hint="pass --overwrite to replace it, or pick another --out",
        )
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise DataError(
            file=str(out_dir),
            expected="a folder whose parent this user may write (export renames into place)",
            found=f"no write permission on {out_dir.parent}",
        )


def _put_in_place(work: Path, out_dir: Path) -> None:
    """Rename a complete model folder to ``out_dir``; an earlier one there goes only then."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old{os.getpid()}"
        out_dir.rename(old)
    try:
        work.rename(out_dir)
    except OSError:
        if old is not None:
            old.rename(out_dir)  # put the earlier export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_model_folder(
    folder: Path,
    serving: ServingModel,
    spec: Spec,
    ckpt: Path,
    transforms_path: Path,
    spec_file: Optional[Path],
) -> None:
    """The program (or TorchScript), transforms, spec and, last, the manifest."""
    fallback_reason: Optional[str] = None
    try:
        program = export_program(serving, spec)
        module: nn.Module = program.module()
        torch.export.save(program, str(folder / PROGRAM_FILE))
        kind, file = "torch.export", PROGRAM_FILE
    except Exception as e:  # any export failure falls back to TorchScript
        fallback_reason = f"{type(e).__name__}: {first_line(e, limit=300)}"
        logger.warning("torch.export failed (%s); saving TorchScript instead", fallback_reason)
        try:
            module = torch.jit.script(serving)
        except Exception as script_error:
            raise RuntimeError(
                f"cannot export the model: torch.export failed ({fallback_reason}) and "
                f"torch.jit.script failed ({first_line(script_error, limit=300)})"
            ) from script_error
        torch.jit.save(module, str(folder / SCRIPT_FILE))
        kind, file = "torchscript", SCRIPT_FILE
    _check_same(serving, module, spec)

    shutil.copyfile(transforms_path, folder / TRANSFORMS_FILE)
    if spec_file is not None:
        shutil.copyfile(spec_file, folder / SPEC_FILE)
    else:  # the spec the model was built from
        (folder / SPEC_FILE).write_text(saved_spec_text(spec))
    manifest = build_manifest(spec, kind, file, ckpt, fallback_reason)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def build_manifest(
    spec: Spec, kind: str, file: str, checkpoint: Path, fallback_reason: Optional[str] = None
) -> Dict[str, Any]:
    """The ``manifest.json`` content of a model folder."""
    import torchrec

    keys = [f.name for f in spec.sparse_features]
    dense = [f.name for f in spec.dense_features]
    trainer_json = checkpoint / "trainer.json"
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "kind": kind,
        "file": file,
        "fallback_reason": fallback_reason,
        "inputs": {
            "dense": {"shape": ["B", len(dense)], "dtype": "float32", "features": dense},
            "values": {"shape": ["N"], "dtype": "int64", "order": "key-major"},
            "lengths": {"shape": [len(keys), "B"], "dtype": "int64", "keys": keys},
        },
        "outputs": {
            "shape": ["B", len(spec.tasks)],
            "dtype": "float32",
            "tasks": [
                {
                    "name": t.name,
                    "type": t.type,
                    "output": "probability" if t.type == "binary" else "value",
                }
                for t in spec.tasks
            ],
        },
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_choice": describe_checkpoint(checkpoint),
        "trainer_state": json.loads(trainer_json.read_text()) if trainer_json.is_file() else None,
        "torch": torch.__version__,
        "torchrec": getattr(torchrec, "__version__", None),
    }


def _check_same(eager: nn.Module, exported: nn.Module, spec: Spec) -> None:
    inputs = example_inputs(spec, batch_size=5)
    with torch.no_grad():
        a, b = eager(*inputs), exported(*inputs)
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"exported model differs from eager: max |diff| {(a - b).abs().max()}")
