"""The ``torchrec-ple`` argument parser: one subcommand each, in the order of ``--help``.

Imports nothing heavy: ``--help`` and a bad argument never import torch (the commands'
options that need a library, such as ``compare``'s heads, import it lazily).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["build_parser"]


def _add_spec_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument(
            "spec",
            type=Path,
            nargs="?",
            default=None,
            help="the YAML spec; default: the run's saved spec.yaml",
        )
    else:
        p.add_argument("spec", type=Path, help="the YAML spec")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec field, e.g. --set train.epochs=3 (repeatable)",
    )


def _add_step_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-step",
        dest="checkpoint_step",
        default=None,
        metavar="best|last|STEP",
        help="which checkpoint of the run: best (train.select's), last, or a step; "
        "default: the best when the run has one, else the last",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``torchrec-ple`` parser: one subcommand each, added in the order of ``--help``."""
    parser = argparse.ArgumentParser(
        prog="torchrec-ple", description="Multi-task recommendation (PLE) on TorchRec."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_validate_parser,
        _add_fit_parser,
        _add_evaluate_parser,
        _add_export_parser,
        _add_predict_parser,
        _add_clicklog_parser,
        _add_compare_parser,
        _add_serve_parser,
        _add_tune_parser,
    ):
        add(sub)
    return parser


_Subparsers = argparse._SubParsersAction


def _add_validate_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("validate", help="check a spec, and its data's schema when reachable")
    _add_spec_args(p)
    p.add_argument("--no-data", action="store_true", help="check the spec only")
    p.add_argument(
        "--scan",
        action="store_true",
        help="also read every row through the transforms and data policies, as fit would "
        "(loads the data into memory); prints what the policies fill, clip and drop",
    )


def _add_fit_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("fit", help="train a spec and evaluate it on its validation data")
    _add_spec_args(p)
    # a string, not a Path: Path("") is ".", and an empty --out must be refused
    p.add_argument("--out", required=True, help="run directory to write")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --out"
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --out (removed once the new run's data is read)",
    )


def _add_evaluate_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("evaluate", help="evaluate a fitted run on its (or the spec's) data")
    _add_spec_args(p, optional=True)
    p.add_argument("--checkpoint", type=Path, required=True, help="the run directory of fit")
    _add_step_arg(p)
    p.add_argument("--split", choices=["validation", "train"], default="validation")
    p.add_argument(
        "--input", type=Path, help="evaluate these rows (Parquet/CSV with labels) instead"
    )
    p.add_argument("--json", action="store_true", help="print metrics as JSON")


def _add_export_parser(sub: _Subparsers) -> None:
    p = sub.add_parser("export", help="write an unsharded torch.export model and its transforms")
    p.add_argument("--checkpoint", type=Path, required=True, help="the run directory of fit")
    _add_step_arg(p)
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def _add_predict_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "predict", help="score a Parquet/CSV file with a fitted run or exported model"
    )
    _add_spec_args(p, optional=True)
    p.add_argument("--checkpoint", type=Path, required=True, help="run directory or exported model")
    _add_step_arg(p)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="file to write: CSV for a .csv or .csv.gz suffix, else Parquet",
    )
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="COLUMN",
        help="copy a column (e.g. an id) to the output",
    )
    p.add_argument("--prefix", default="", help="prefix of the per-task score columns")
    p.add_argument(
        "--device",
        default="cpu",
        metavar="cpu|cuda[:N]",
        help="where the model scores (rows are encoded on CPU either way); default: cpu",
    )


def _add_clicklog_parser(sub: _Subparsers) -> None:
    from torchrec_ple.data.clicklog import add_arguments as clicklog_arguments

    p = sub.add_parser(
        "generate-clicklog", help="write synthetic click logs as Parquet (streaming benchmark)"
    )
    clicklog_arguments(p)


def _add_compare_parser(sub: _Subparsers) -> None:
    from torchrec_ple.train.compare import add_compare_args

    p = sub.add_parser("compare", help="train several architectures on the same data and compare")
    _add_spec_args(p)
    add_compare_args(p)


def _add_tune_parser(sub: _Subparsers) -> None:
    from torchrec_ple.train.tune import add_tune_args  # optuna itself is imported on use

    p = sub.add_parser(
        "tune", help="search the spec's tune: space per architecture (Optuna, Pareto fronts)"
    )
    _add_spec_args(p)
    add_tune_args(p)


def _add_serve_parser(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "serve",
        help="score over HTTP (POST /score) with an exported model, beside a Feast store",
        description="Serve an exported model over HTTP: POST /score (entity keys read from "
        "the Feast online store, or raw feature values), GET /health /metadata /metrics, "
        "POST /reload (or SIGHUP). Needs the Feast extra (fastapi, uvicorn).",
    )
    p.add_argument("model_dir", type=Path, help="a model folder written by export")
    p.add_argument("--feast-repo", type=Path, help="Feast repo (feature_store.yaml) to read")
    p.add_argument("--feature-service", help="Feast feature service (default: the model's)")
    p.add_argument(
        "--fill",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="value for store nulls, e.g. an unknown entity's id column (repeatable)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument(
        "--batch-wait-us",
        type=int,
        default=1000,
        help="micro-batching: wait up to this long for more requests (0: no wait)",
    )
    p.add_argument("--max-batch-rows", type=int, default=256, help="rows per micro-batch")
    p.add_argument("--max-rows", type=int, default=1000, help="rows per request (more: 413)")
    p.add_argument(
        "--max-queue", type=int, default=1024, help="requests waiting for a batch (more: 503)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--access-log", action="store_true", help="log every request")
