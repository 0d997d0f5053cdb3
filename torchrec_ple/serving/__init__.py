"""Serving: export a fitted run to a self-contained model folder, and score files with it.

* :func:`export_model` turns a run directory of ``fit`` into a model folder holding a
  ``torch.export`` program (``model.pt2``), the fitted ``transforms.json``, the resolved
  ``spec.yaml`` and a ``manifest.json`` describing inputs and outputs;
* :func:`load_exported` loads such a folder without unpickling arbitrary objects;
* :func:`predict_file` scores a Parquet/CSV file from a run directory or a model folder;
* :func:`run_server` (``torchrec-ple serve``) scores over HTTP, entity keys read from the
  Feast online store or raw values (:mod:`torchrec_ple.serving.server`); one loaded folder
  is a :class:`OnlineModel` (:func:`load_online_model`).

Importing this package imports neither torch nor torchrec; its functions do.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ExportedModel",
    "OnlineModel",
    "Scorer",
    "ServeSettings",
    "ServingModel",
    "export_model",
    "load_exported",
    "load_online_model",
    "load_saved_spec",
    "load_scorer",
    "load_unsharded",
    "predict_file",
    "predict_table",
    "run_server",
]

_WHERE = {
    "ExportedModel": "torchrec_ple.serving.export",
    "ServingModel": "torchrec_ple.serving.export",
    "export_model": "torchrec_ple.serving.export",
    "load_exported": "torchrec_ple.serving.export",
    "load_saved_spec": "torchrec_ple.serving.export",
    "load_unsharded": "torchrec_ple.serving.export",
    "Scorer": "torchrec_ple.serving.predict",
    "load_scorer": "torchrec_ple.serving.predict",
    "predict_file": "torchrec_ple.serving.predict",
    "predict_table": "torchrec_ple.serving.predict",
    "OnlineModel": "torchrec_ple.serving.online",
    "load_online_model": "torchrec_ple.serving.online",
    "ServeSettings": "torchrec_ple.serving.server",
    "run_server": "torchrec_ple.serving.server",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
