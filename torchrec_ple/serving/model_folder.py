"""An exported model folder (``export``'s output), loaded without torchrec or pickle.

A model folder holds ``model.pt2`` (a ``torch.export`` program) or ``model.ts``
(TorchScript, the fallback), ``transforms.json``, ``spec.yaml`` and ``manifest.json`` (see
:mod:`torchrec_ple.serving.export` for the program's contract).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch import nn

from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec.errors import DataError, first_line
from torchrec_ple.spec.schema import Spec
from torchrec_ple.train.distributed import DropMessages
from torchrec_ple.train.run_spec import load_saved_spec

__all__ = [
    "ExportedModel",
    "MANIFEST_FILE",
    "check_no_pickle",
    "is_model_dir",
    "load_exported",
    "program_on",
]

MANIFEST_FILE = "manifest.json"
PROGRAM_FILE = "model.pt2"
SCRIPT_FILE = "model.ts"
TRANSFORMS_FILE = "transforms.json"
SPEC_FILE = "spec.yaml"
MANIFEST_FORMAT = "torchrec-ple-model"
MANIFEST_VERSION = 1

PathLike = Union[str, Path]


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


_FX_NOTICE = "is_fx_tracing will return true"


def _quiet_fx_notice() -> None:
    """Drop torch.fx's notice about ``is_fx_tracing`` under export (by its exact text, once)."""
    fx_logger = logging.getLogger("torch.fx._symbolic_trace")
    if not any(
        isinstance(f, DropMessages) and _FX_NOTICE in f._fragments for f in fx_logger.filters
    ):
        fx_logger.addFilter(DropMessages(_FX_NOTICE))


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
                            found=first_line(e, limit=300),
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
