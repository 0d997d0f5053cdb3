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

from torchrec_ple.cli_parser import build_parser


def _set_thread_env() -> None:
    # Before any torch import (this module imports torch lazily): libgomp reads the
    # variables when it loads. Several processes on the node share its cores, one share
    # each, unless OMP_NUM_THREADS says otherwise; the wait policy follows from that count.
    from torchrec_ple.threads import configure_threads

    configure_threads(default_threads=True)
    # Arrow buffers freed after reading go back to the OS (lower peak memory of a fit).
    from torchrec_ple.data.sources import use_returning_memory_pool

    use_returning_memory_pool()


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
