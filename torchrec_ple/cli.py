"""The ``torchrec-ple`` command line: validate, fit, evaluate.

Bad input ends with one line on stderr (``error: <file>:<line>: <key>: expected ...``)
and exit code 2, never a traceback; Ctrl-C ends with one line (for ``fit``: the step and
the checkpoint to ``--resume`` from) and exit code 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence


def _set_thread_env() -> None:
    # Before any torch import (this module imports torch lazily): libgomp reads the
    # variables when it loads. Several processes on the node share its cores, one share
    # each, unless OMP_NUM_THREADS says otherwise; the wait policy follows from that count.
    from torchrec_ple.threads import configure_threads

    configure_threads(default_threads=True)
    # Arrow buffers freed after reading go back to the OS (lower peak memory of a fit).
    from torchrec_ple.data.sources import use_returning_memory_pool

    use_returning_memory_pool()


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


def _print_metrics(tasks: Dict[str, Dict[str, float]]) -> None:
    from torchrec_ple.train.metrics import format_metric

    print(f"{'task':<20} {'metric':<6} {'value':>10} {'count':>10}")
    for name, m in tasks.items():
        metric = "auc" if "auc" in m else "mse"
        print(f"{name:<20} {metric:<6} {format_metric(m[metric]):>10} {int(m['count']):>10}")
        if m.get("note"):
            print(f"  {name}: {m['note']}")


def _cmd_validate(args: argparse.Namespace) -> int:
    from torchrec_ple.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    print(
        f"{args.spec}: spec OK ({len(spec.features)} features, {len(spec.tasks)} tasks, "
        f"architecture {spec.model.architecture})"
    )
    if not args.no_data:
        from torchrec_ple.data.validate import check_data, scan_data

        for line in check_data(spec):
            print(line)
        if args.scan:
            for line in scan_data(spec):
                print(line)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from torchrec_ple.train.run_dir import check_out_arg

    # before the spec, the data or torch are touched: a bad --out costs nothing
    args.out = check_out_arg(args.out, args.spec, resume=args.resume)
    from torchrec_ple.data.prefetch import DataPrefetch
    from torchrec_ple.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    # the data's reading and encoding overlap the training stack's imports (~1 s)
    prefetch = None if args.resume else DataPrefetch.start(spec)
    from torchrec_ple.train.trainer import fit

    metrics = fit(spec, args.out, resume=args.resume, overwrite=args.overwrite, prefetch=prefetch)
    if _is_main():
        best = metrics.get("best")
        if best and best.get("tasks"):
            # train.select chose an epoch: its metrics are what evaluate/export/predict use
            print(f"best epoch {best['epoch']} (step {best['step']}, {best['select']}):")
            _print_metrics(best["tasks"])
            print(f"last epoch {metrics['history'][-1]['epoch']}:")
        _print_metrics(metrics["tasks"])
        print(
            f"train: {metrics['train']['samples_per_second']:.0f} samples/s; wrote {args.out}/metrics.json"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.trainer import evaluate

    # no SPEC: the run's saved spec.yaml (its data paths are absolute), --set applied to it
    spec = load_spec(args.spec, args.overrides) if args.spec is not None else None
    result = evaluate(
        spec,
        args.checkpoint,
        args.split,
        input_path=args.input,
        which=args.checkpoint_step,
        overrides=args.overrides,
    )
    if _is_main():
        what = args.input if args.input is not None else f"the {args.split} data"
        line = f"checkpoint {result['checkpoint']['description']} on {what}"
        if args.json:
            print(line, file=sys.stderr)  # stdout stays one JSON document
            print(json.dumps(result, indent=1))
        else:
            print(line)
            _print_metrics(result["tasks"])
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _cmd_export(args: argparse.Namespace) -> int:
    from torchrec_ple.serving.export import export_model

    replacing = args.overwrite and args.out.is_dir() and any(args.out.iterdir())
    path = export_model(
        None, args.checkpoint, args.out, overwrite=args.overwrite, which=args.checkpoint_step
    )
    choice = json.loads((path / "manifest.json").read_text()).get("checkpoint_choice")
    print(
        f"wrote {path} from checkpoint {choice}"
        + (" (replaced the earlier export there)" if replacing else "")
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from torchrec_ple.serving.predict import load_scorer, predict_file
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.run_dir import check_out_file

    check_out_file(args.output)
    # no SPEC: the one saved with the run or the exported model
    spec = load_spec(args.spec, args.overrides) if args.spec is not None else None
    scorer = load_scorer(args.checkpoint, spec, args.checkpoint_step, device=args.device)
    if scorer.checkpoint:
        print(f"checkpoint {scorer.checkpoint}")
    out = predict_file(
        spec,
        scorer,
        args.input,
        args.output,
        args.batch_size,
        args.keep,
        prefix=args.prefix,
    )
    print(f"scored {out['rows']} rows -> {out['output']} (columns {', '.join(out['columns'])})")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from torchrec_ple.train.compare import run_compare

    return run_compare(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from torchrec_ple.train.tune import run_tune

    return run_tune(args)


def _cmd_generate_clicklog(args: argparse.Namespace) -> int:
    from torchrec_ple.data.clicklog import run

    return run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from torchrec_ple.serving.server import ServeSettings, parse_fill, run_server

    settings = ServeSettings(
        model_dir=args.model_dir,
        feast_repo=args.feast_repo,
        feature_service=args.feature_service,
        fill=parse_fill(args.fill),
        host=args.host,
        port=args.port,
        batch_wait_us=args.batch_wait_us,
        max_batch_rows=args.max_batch_rows,
        max_rows=args.max_rows,
        max_queue=args.max_queue,
        threads=args.threads,
        access_log=args.access_log,
    )
    return run_server(settings)


_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _cmd_validate,
    "fit": _cmd_fit,
    "evaluate": _cmd_evaluate,
    "compare": _cmd_compare,
    "export": _cmd_export,
    "predict": _cmd_predict,
    "generate-clicklog": _cmd_generate_clicklog,
    "serve": _cmd_serve,
    "tune": _cmd_tune,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``torchrec-ple`` and ``python -m torchrec_ple``."""
    _set_thread_env()
    args = build_parser().parse_args(argv)
    from torchrec_ple.spec.errors import DataError, SpecError

    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        # Ctrl-C: one line saying where the run stands, not the stack of wherever it hit
        line = "interrupted"
        if args.command == "fit":
            from torchrec_ple.train.run_dir import interrupted_message

            line = interrupted_message(Path(args.out), e.__traceback__)
        if _is_main():
            print(line, file=sys.stderr)
        return 130
    except (SpecError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"error: {_out_of_memory(e)}", file=sys.stderr)
        return 3
    except RuntimeError as e:
        from torchrec_ple.train.trainer import TrainingError

        if isinstance(e, TrainingError):
            print(f"error: {e}", file=sys.stderr)
            return 3
        from torchrec_ple.train.distributed import collective_timeout_message

        timed_out = collective_timeout_message(e)
        if timed_out is not None:
            print(f"error: {timed_out}", file=sys.stderr)
            return 3
        if _is_allocation_failure(e):
            print(f"error: {_out_of_memory(e)}", file=sys.stderr)
            return 3
        raise
    finally:
        run_dir = sys.modules.get("torchrec_ple.train.run_dir")
        if run_dir is not None:  # a fit's lock, even if a traceback still holds its frame
            run_dir.release_all()
        _shutdown()


def run() -> None:
    """The ``torchrec-ple`` command (and ``python -m torchrec_ple``): :func:`main`, then exit.

    The exit does what a normal one does that matters: non-daemon threads are joined, the
    ``atexit`` handlers run (logging, multiprocessing's children, weakref finalizers, the
    libraries' own), stdout and stderr are flushed; it skips the interpreter's teardown of
    every module, which frees torch's and TorchRec's objects one by one for about 0.5 s per
    command and writes nothing (measured: 0.52 s of a census ``fit``'s 7.9 s, 0.45 s after
    only importing torch and TorchRec). An exception :func:`main` does not handle exits the
    normal way, with its traceback. Calling :func:`main` in-process is unaffected.
    """
    try:
        code: object = main()
    except SystemExit as e:  # argparse: --help, usage errors
        code = e.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _exit_without_teardown(code)


def _exit_without_teardown(code: int) -> None:
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the handlers a normal exit runs (no public call does this)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream
            pass
    os._exit(code)


def _is_allocation_failure(e: RuntimeError) -> bool:
    # torch's CPU allocator raises a plain RuntimeError; CUDA's is torch.OutOfMemoryError
    text = str(e)
    return "can't allocate memory" in text or type(e).__name__ == "OutOfMemoryError"


def _out_of_memory(e: BaseException) -> str:
    """An allocation failure in one line: how much was asked, and what to lower."""
    import re

    asked = re.search(r"tried to allocate (\d+(?:\.\d+)? ?[KMGT]?i?B|\d+ bytes)", str(e))
    what = f"tried to allocate {asked.group(1)}" if asked else type(e).__name__
    return (
        f"out of memory: {what} (lower the embedding dims, the model's layer sizes or "
        "train.batch_size; `torchrec-ple validate --scan` estimates the model's memory)"
    )


def _shutdown() -> None:
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
