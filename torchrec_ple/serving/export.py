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

import io
import json
import logging
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.models.builder import build_model
from torchrec_ple.models.multitask import MultiTaskModel
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.loader import parse_spec
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import DropMessages
from torchrec_ple.train.run_dir import check_out_folder

logger = logging.getLogger("torchrec_ple")

MANIFEST_FILE = "manifest.json"
PROGRAM_FILE = "model.pt2"
SCRIPT_FILE = "model.ts"
TRANSFORMS_FILE = "transforms.json"
SPEC_FILE = "spec.yaml"
MANIFEST_FORMAT = "torchrec-ple-model"
MANIFEST_VERSION = 1
# The trainer wraps the model as ``MultiTaskTrainModule.model``: DMP state-dict keys carry it.
CHECKPOINT_PREFIX = "model."

PathLike = Union[str, Path]


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


@dataclass
class ExportedModel:
    """A loaded model folder.

    Args:
        module (nn.Module): callable ``(dense, values, lengths) -> (B, K)`` scores.
        spec (Spec): the run's resolved spec.
        transforms (FeatureTransforms): the run's fitted transforms.
        manifest (Dict[str, Any]): the folder's ``manifest.json``.
    """

    module: nn.Module
    spec: Spec
    transforms: FeatureTransforms
    manifest: Dict[str, Any]

    @torch.no_grad()
    def __call__(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        return self.module(dense, values, lengths)


# ---------------------------------------------------------------------------- loading runs


def load_saved_spec(directory: PathLike, overrides: Sequence[str] = ()) -> Spec:
    """The resolved ``spec.yaml`` a run directory or a model folder holds.

    Data paths in it are not checked (serving needs none of them); ``fit`` saves them
    absolute, so ``evaluate`` finds the run's data from the folder alone.

    Args:
        directory (PathLike): the run directory or model folder.
        overrides (Sequence[str]): ``key.path=value`` overrides (``--set``). Default: none.
    """
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise DataError(
            file=str(path), expected="the spec.yaml written by fit or export", found="nothing"
        )
    return parse_spec(path.read_text(encoding="utf-8"), path, overrides)


def resolve_run(run_dir: PathLike, which: Optional[str] = None) -> Tuple[Path, Path]:
    """(checkpoint directory, transforms.json) of a run directory or one of its checkpoints.

    ``which`` picks a run directory's checkpoint: ``best``, ``last``, a step, or None (the
    best when the run was fitted with ``train.select``, else the last); see
    :func:`torchrec_ple.train.trainer.resolve_checkpoint`.

    Refuses a checkpoint older than the run's ``transforms.json``: a fresh ``fit`` writes
    its transforms before any checkpoint, so such a checkpoint was left in the directory
    by an earlier fit (whose model need not match these transforms).
    """
    from torchrec_ple.train.trainer import resolve_checkpoint

    ckpt, transforms_path = resolve_checkpoint(Path(run_dir), which)
    meta = ckpt / "trainer.json"
    if meta.is_file() and meta.stat().st_mtime < transforms_path.stat().st_mtime:
        raise DataError(
            file=str(ckpt),
            expected=f"a checkpoint written after {transforms_path.name} (by the same fit)",
            found="an older one, left by an earlier fit into this directory",
            hint="remove the stale checkpoints/step_* folders or fit into a new directory",
        )
    return ckpt, transforms_path


def load_unsharded(
    spec: Optional[Spec],
    run_dir: PathLike,
    which: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> Tuple[MultiTaskModel, FeatureTransforms]:
    """Build the model unsharded and load a fit run's DCP checkpoint into it (on CPU, then
    moved to ``device``).

    The checkpoint's ``model`` entry is the DMP state dict of ``MultiTaskTrainModule``;
    its ``model.`` prefix is mapped away. DCP reads it without a process group
    (``no_dist=True``), whatever world size and sharding wrote it.

    Args:
        spec (Optional[Spec]): the run's spec; ``None`` reads the run's ``spec.yaml``.
        run_dir (PathLike): ``fit``'s output directory, or one ``checkpoints/step_*``.
        which (Optional[str]): the run's checkpoint (see :func:`resolve_run`). Default:
            the best, else the last.
        device (Union[str, torch.device]): where the loaded model computes (a checkpoint
            written on GPUs loads on CPU and vice versa). Default: ``cpu``.

    Returns:
        Tuple[MultiTaskModel, FeatureTransforms]: the model in eval mode, and the run's
        transforms.
    """
    import torch.distributed.checkpoint as dcp

    ckpt, transforms_path = resolve_run(run_dir, which)
    if spec is None:
        spec = load_saved_spec(transforms_path.parent)
    transforms = FeatureTransforms.load(spec, transforms_path)
    model = build_model(spec, transforms, device="cpu")
    state = {CHECKPOINT_PREFIX + k: v for k, v in model.state_dict().items()}
    try:
        with warnings.catch_warnings():
            # no_dist=True is the intent: DCP still warns that it loads in one process.
            warnings.filterwarnings(
                "ignore", message=r"torch.distributed is disabled", category=UserWarning
            )
            dcp.load({"model": state}, checkpoint_id=str(ckpt), no_dist=True)
    except Exception as e:  # DCP raises CheckpointException / RuntimeError with long texts
        raise DataError(
            file=str(ckpt),
            expected="a checkpoint of a model built from this spec and transforms",
            found=_first_line(e),
        ) from e
    model.load_state_dict({k[len(CHECKPOINT_PREFIX) :]: v for k, v in state.items()})
    model.eval()
    return model.to(device), transforms


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


_FX_NOTICE = "is_fx_tracing will return true"


def _quiet_fx_notice() -> None:
    """Drop torch.fx's notice about ``is_fx_tracing`` under export (by its exact text, once)."""
    fx_logger = logging.getLogger("torch.fx._symbolic_trace")
    if not any(
        isinstance(f, DropMessages) and _FX_NOTICE in f._fragments for f in fx_logger.filters
    ):
        fx_logger.addFilter(DropMessages(_FX_NOTICE))


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
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export_out(out_dir, overwrite)
    ckpt, transforms_path = resolve_run(run_dir, which)
    source_dir = transforms_path.parent
    spec_file = None if spec is not None else source_dir / SPEC_FILE
    if spec is None:
        spec = load_saved_spec(source_dir)
    model, _ = load_unsharded(spec, ckpt)
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
        fallback_reason = f"{type(e).__name__}: {_first_line(e)}"
        logger.warning("torch.export failed (%s); saving TorchScript instead", fallback_reason)
        try:
            module = torch.jit.script(serving)
        except Exception as script_error:
            raise RuntimeError(
                f"cannot export the model: torch.export failed ({fallback_reason}) and "
                f"torch.jit.script failed ({_first_line(script_error)})"
            ) from script_error
        torch.jit.save(module, str(folder / SCRIPT_FILE))
        kind, file = "torchscript", SCRIPT_FILE
    _check_same(serving, module, spec)

    shutil.copyfile(transforms_path, folder / TRANSFORMS_FILE)
    if spec_file is not None:
        shutil.copyfile(spec_file, folder / SPEC_FILE)
    else:  # the spec the model was built from
        from torchrec_ple.train.trainer import saved_spec_mapping

        (folder / SPEC_FILE).write_text(yaml.safe_dump(saved_spec_mapping(spec), sort_keys=False))
    manifest = build_manifest(spec, kind, file, ckpt, fallback_reason)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def build_manifest(
    spec: Spec, kind: str, file: str, checkpoint: Path, fallback_reason: Optional[str] = None
) -> Dict[str, Any]:
    """The ``manifest.json`` content of a model folder."""
    import torchrec

    from torchrec_ple.train.trainer import describe_checkpoint

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


# ---------------------------------------------------------------------------- loading exports


def check_no_pickle(program_path: PathLike) -> None:
    """Raise unless a ``torch.export.save`` archive loads without unpickling arbitrary objects.

    ``torch.export.load`` unpickles (``weights_only=False``) only weights and constants
    flagged ``use_pickle`` (tensor subclasses) or custom/opaque objects, which a program of
    plain tensors has none of (read from the archive's JSON configs), and its sample inputs
    when they fail to load with ``weights_only=True``: they are loaded so here first.
    """
    path = Path(program_path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            configs = [
                n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))
            ]
            if not configs:
                raise DataError(
                    file=str(path),
                    expected="a torch.export.save archive with weight configs",
                    found=f"entries {names[:8]}",
                )
            for name in configs:
                config = json.loads(zf.read(name)).get("config", {})
                for fqn, payload in config.items():
                    pickled = payload.get("use_pickle", False)
                    kind = str(payload.get("path_name", ""))
                    if pickled or kind.startswith(("custom_obj", "opaque_obj")):
                        raise DataError(
                            file=str(path),
                            expected="only raw tensor payloads (loadable without pickle)",
                            found=f"pickled payload {fqn!r} ({kind})",
                        )
            for name in names:
                if "/sample_inputs/" in name:
                    try:
                        torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                    except Exception as e:
                        raise DataError(
                            file=str(path),
                            expected="sample inputs loadable with weights_only=True",
                            found=_first_line(e),
                        ) from None
    except zipfile.BadZipFile as e:
        raise DataError(
            file=str(path), expected="a torch.export.save archive", found=str(e)
        ) from None


def program_on(
    program: torch.export.ExportedProgram, device: Union[str, torch.device]
) -> torch.export.ExportedProgram:
    """An exported program (traced on CPU) moved to ``device``: its weights, buffers and
    the devices its graph names (``torch.export.passes.move_to_device_pass``)."""
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, str(torch.device(device)))


def load_exported(model_dir: PathLike, device: Union[str, torch.device] = "cpu") -> ExportedModel:
    """Load a model folder written by :func:`export_model`.

    ``model.pt2`` is loaded with ``torch.export.load`` after :func:`check_no_pickle`;
    a TorchScript fallback (``model.ts``) with ``torch.jit.load``, whose restricted
    unpickler builds only tensors and scripted modules.

    Args:
        model_dir (PathLike): the model folder.
        device (Union[str, torch.device]): where the program computes; a GPU moves the
            CPU-traced program there (:func:`program_on`). Default: ``cpu``.

    Returns:
        ExportedModel: the callable program with its spec, transforms and manifest.
    """
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(
            file=str(manifest_path), expected="a model folder written by export", found="nothing"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise DataError(
            file=str(manifest_path),
            expected=f"{MANIFEST_FORMAT} manifest version {MANIFEST_VERSION}",
            found=f"{manifest.get('format')} version {manifest.get('version')}",
        )
    spec = load_saved_spec(model_dir)
    transforms = FeatureTransforms.load(spec, model_dir / TRANSFORMS_FILE)
    file = model_dir / manifest["file"]
    _quiet_fx_notice()
    if manifest["kind"] == "torch.export":
        check_no_pickle(file)
        with open(file, "rb") as f:
            program = torch.export.load(io.BytesIO(f.read()))
        if torch.device(device).type != "cpu":
            program = program_on(program, device)
        module: nn.Module = program.module()
    else:
        module = torch.jit.load(str(file), map_location=torch.device(device))
        module.eval()
    return ExportedModel(module, spec, transforms, manifest)


def is_model_dir(path: PathLike) -> bool:
    """True for a model folder of :func:`export_model` (it has a manifest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
