"""Helpers of ``benchmarks/gpu_check.sh``: the checks that need Python, one subcommand each.

Every subcommand writes one JSON file and prints one line; a failed check exits 1 (the
shell script records it and goes on). With ``--device cpu`` the same code runs on a machine
without a GPU (host reads counted instead of CUDA sync warnings), which is how the script
is tested before it gets GPU time. The plain-PyTorch PLE of ``plain`` lives in
``benchmarks/gpu_plain.py``.

Usage: ``python -m benchmarks.gpu_check <stack|smoke|l2|same|near|finite|scores|plain|summary> ...``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from benchmarks.gpu_plain import plain_rate


def _write(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


# ------------------------------------------------------------------------------- stack


def cmd_stack(args: argparse.Namespace) -> int:
    """Versions, the fbgemm build and the GPU; with ``--require-cuda``, fail unless usable."""
    import fbgemm_gpu
    import torchrec

    from torchrec_ple.train.device import SetupError, compute_device_type

    info: Dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"),
        "fbgemm_variant": getattr(fbgemm_gpu, "__variant__", "?"),
        "torchrec": getattr(torchrec, "__version__", "?"),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        info["device_type"] = compute_device_type()
    except SetupError as e:
        info["device_type"], info["error"] = None, str(e)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
        info["gpus"] = torch.cuda.device_count()
    _write(args.out, info)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    if args.require_cuda and info["device_type"] != "cuda":
        print(f"stack: not usable on the GPU: {info.get('error', 'no CUDA device')}")
        return 1
    return 0


# ------------------------------------------------------------------------------- smoke


def _host_reads() -> Tuple[Counter, Callable[[], None]]:
    """Count tensor reads to the host by the project's code (what syncs on a GPU); CPU mode."""
    import torchrec_ple

    pkg = os.path.dirname(torchrec_ple.__file__)
    data = os.path.join(pkg, "data")
    counts: Counter = Counter()
    saved = {}
    for name in ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__"):
        original = saved[name] = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *a: Any, _f: Any = original, _n: str = name, **k: Any) -> Any:
            caller = sys._getframe(1)
            where = caller.f_code.co_filename
            if where.startswith(pkg) and not where.startswith(data):
                counts[f"{_n} {os.path.relpath(where, pkg)}:{caller.f_lineno}"] += 1
            return _f(self, *a, **k)

        setattr(torch.Tensor, name, read)

    def restore() -> None:
        for name, f in saved.items():
            setattr(torch.Tensor, name, f)

    return counts, restore


def _sync_warnings(run: Callable[[], None]) -> Counter:
    """Run ``run`` under ``torch.cuda.set_sync_debug_mode("warn")``; count every sync by the
    innermost frame of the project, TorchRec or fbgemm that caused it."""
    counts: Counter = Counter()

    def capture(message: Any, category: Any, filename: str, lineno: int, *a: Any) -> None:
        frames = [
            f
            for f in traceback.extract_stack()[:-1]
            if any(k in f.filename for k in ("torchrec_ple", "torchrec/", "fbgemm_gpu", "torch/"))
            and "gpu_check.py" not in f.filename
            and "warnings.py" not in f.filename
        ]
        where = " <- ".join(
            f"{f.filename.split('site-packages/')[-1].split('/work/')[-1]}:{f.lineno}"
            for f in frames[-3:][::-1]
        )
        counts[where or f"{filename}:{lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = capture  # type: ignore[assignment]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return counts


def cmd_smoke(args: argparse.Namespace) -> int:
    """Plan, memory after sharding and the syncs of steady-state steps (finite check on/off)."""
    from torchrec_ple.data.batch import BatchLoader
    from torchrec_ple.data.sources import load_tables
    from torchrec_ple.data.validate import fit_and_encode
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.distributed import init_distributed
    from torchrec_ple.train.pipeline import FiniteLossTrainPipeline, batch_iterator
    from torchrec_ple.train.trainer import build_state, describe_plan

    spec = load_spec(args.spec, args.overrides)
    ctx = init_distributed()
    cuda = ctx.device.type == "cuda"
    transforms, train, _ = fit_and_encode(spec, *load_tables(spec))
    state = build_state(spec, transforms, ctx)
    plan = {
        name: {"sharding": ps.sharding_type, "kernel": ps.compute_kernel, "ranks": ps.ranks}
        for module_plan in state.model.plan.plan.values()
        for name, ps in module_plan.items()  # type: ignore[union-attr]
    }
    out: Dict[str, Any] = {"device": str(ctx.device), "plan": plan}
    if state.plan_estimate is not None:
        out["plan_line"] = describe_plan(state.plan_estimate)
    if cuda:
        out["mb_after_shard"] = torch.cuda.memory_allocated() / 2**20

    def loader() -> Iterator[Any]:
        while True:
            yield from BatchLoader(train, spec.train.batch_size, shuffle=True)

    for check in (True, False):
        pipe = FiniteLossTrainPipeline(state.model, state.optimizer, ctx.device, check_finite=check)
        it = batch_iterator(loader(), ctx.device)
        for _ in range(args.warmup):
            pipe.progress(it)

        def steps(pipe: Any = pipe, it: Any = it) -> None:
            for _ in range(args.steps):
                pipe.progress(it)  # no printing here: it would sync

        if cuda:
            counts = _sync_warnings(steps)
        else:
            counts, restore = _host_reads()
            try:
                steps()
            finally:
                restore()
        pipe.detach()
        getattr(it, "close", lambda: None)()
        key = "finite_check_on" if check else "finite_check_off"
        out[key] = {
            "steps": args.steps,
            "syncs": sum(counts.values()),
            "per_step": sum(counts.values()) / args.steps,
            "where": dict(counts.most_common()),
        }
    if cuda:
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    _write(args.out, out)
    on, off = out["finite_check_on"], out["finite_check_off"]
    print(
        f"smoke: plan {plan}; syncs per step: {on['per_step']:.1f} with the finite check, "
        f"{off['per_step']:.1f} without ({'CUDA sync warnings' if cuda else 'host reads'})"
    )
    return 0


# ---------------------------------------------------------------------------------- l2


def cmd_l2(args: argparse.Namespace) -> int:
    """fbgemm row-wise Adagrad with L2 weight decay: a looked-up row whose gradient is zero
    must still move (on a GPU); reported, not required, on CPU (its kernel ignores it)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        EmbeddingLocation,
        SplitTableBatchedEmbeddingBagsCodegen,
        WeightDecayMode,
    )

    cuda = args.device == "cuda"
    where = (
        (EmbeddingLocation.DEVICE, ComputeDevice.CUDA)
        if cuda
        else (EmbeddingLocation.HOST, ComputeDevice.CPU)
    )
    moved = {}
    for mode in (WeightDecayMode.NONE, WeightDecayMode.L2):
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(10, 4, *where)],
            optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
            learning_rate=0.1,
            weight_decay=0.5,
            weight_decay_mode=mode,
            device=torch.device(args.device),
        )
        before = tbe.split_embedding_weights()[0][1].clone()
        dev = torch.device(args.device)
        out = tbe(torch.tensor([1, 1], device=dev), torch.tensor([0, 1, 2], device=dev))
        (out * 0.0).sum().backward()
        after = tbe.split_embedding_weights()[0][1]
        moved[mode.name] = float((after - before).abs().max())
    ok = moved["NONE"] == 0.0 and (moved["L2"] > 0.0 or not cuda)
    _write(args.out, {"device": args.device, "max_row_change": moved, "ok": ok})
    print(f"l2: row change without decay {moved['NONE']:.2e}, with L2 {moved['L2']:.2e}")
    return 0 if ok else 1


# ----------------------------------------------------------------------- comparisons


def _tasks(path: Path) -> Dict[str, Dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    return data["tasks"]


def cmd_same(args: argparse.Namespace) -> int:
    """Two evaluations (``evaluate --json`` or ``metrics.json``) agree within ``--tol``."""
    a, b = _tasks(args.a), _tasks(args.b)
    worst = 0.0
    for task, ma in a.items():
        for key in ("auc", "ne", "mse", "ctcvr_auc"):
            x, y = ma.get(key), b.get(task, {}).get(key)
            if isinstance(x, float) and isinstance(y, float):
                worst = max(worst, abs(x - y))
    ok = worst <= args.tol and set(a) == set(b)
    _write(
        args.out, {"a": str(args.a), "b": str(args.b), "max_diff": worst, "tol": args.tol, "ok": ok}
    )
    print(f"same: max metric difference {worst:.2e} (tolerance {args.tol:g})")
    return 0 if ok else 1


def cmd_near(args: argparse.Namespace) -> int:
    """Every binary task's AUC within ``--tol`` of a reference run's."""
    a, b = _tasks(args.a), _tasks(args.b)
    diffs = {t: abs(m["auc"] - b[t]["auc"]) for t, m in a.items() if "auc" in m and t in b}
    worst = max(diffs.values(), default=0.0)
    ok = worst <= args.tol
    _write(args.out, {"auc_diff": diffs, "tol": args.tol, "ok": ok})
    print(f"near: AUC differences {', '.join(f'{t} {d:.4f}' for t, d in diffs.items())}")
    return 0 if ok else 1


def cmd_finite(args: argparse.Namespace) -> int:
    """A run's training losses are finite and none of its steps was skipped."""
    metrics = json.loads(Path(args.metrics).read_text())
    losses = [v for e in metrics["history"] for v in e["train_loss"].values()]
    ok = bool(losses) and all(math.isfinite(v) for v in losses)
    ok = ok and metrics["train"].get("skipped_steps", 0) == 0
    t = metrics["train"]
    out = {
        "ok": ok,
        "samples_per_second": t["samples_per_second"],
        "gpu_peak_mb_per_rank": t.get("gpu_peak_mb_per_rank"),
        "plan_mb_per_rank": t.get("plan_mb_per_rank"),
        "table_mb_per_rank": t.get("table_mb_per_rank"),
        "auc": {k: m.get("auc") for k, m in metrics["tasks"].items()},
    }
    _write(args.out, out)
    print(
        f"finite: {ok}; {t['samples_per_second']:.0f} samples/s; peak {out['gpu_peak_mb_per_rank']} MB"
    )
    return 0 if ok else 1


def cmd_scores(args: argparse.Namespace) -> int:
    """Two prediction files hold the same scores within ``--tol``."""
    import pyarrow.parquet as pq

    a, b = pq.read_table(args.a), pq.read_table(args.b)
    worst = 0.0
    for name in a.column_names:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        worst = max(worst, float(abs(x - y).max()) if len(x) else 0.0)
    ok = a.num_rows == b.num_rows and worst <= args.tol
    _write(args.out, {"rows": a.num_rows, "max_diff": worst, "tol": args.tol, "ok": ok})
    print(f"scores: {a.num_rows} rows, max difference {worst:.2e}")
    return 0 if ok else 1


def cmd_rows(args: argparse.Namespace) -> int:
    """The spec's validation rows as Parquet (what ``predict`` scores)."""
    import pyarrow.parquet as pq

    from torchrec_ple.data.sources import load_tables
    from torchrec_ple.spec import load_spec

    table = load_tables(load_spec(args.spec, args.overrides))[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    print(f"rows: {table.num_rows} validation rows -> {args.out}")
    return 0


# ------------------------------------------------------------------------------- plain


def cmd_plain(args: argparse.Namespace) -> int:
    """Train steps per second of the plain-PyTorch PLE on random batches already on the
    device (no data path): the upper bound the project's fit is measured against."""
    rate = plain_rate(args.device, args.batch, args.steps, args.precision)
    dev = torch.device(args.device)
    _write(
        args.out,
        {
            "device": str(dev),
            "precision": args.precision,
            "batch": args.batch,
            "samples_per_second": rate,
        },
    )
    print(f"plain: {rate:.0f} samples/s ({args.precision}, batch {args.batch}, {dev})")
    return 0


# ----------------------------------------------------------------------------- summary


def cmd_summary(args: argparse.Namespace) -> int:
    """The table of every step (status, seconds, what it measured) and the throughputs."""
    out_dir = Path(args.dir)
    rows = [line.split("\t") for line in (out_dir / "steps.tsv").read_text().splitlines() if line]
    lines = ["| step | status | seconds | result |", "|---|---|---|---|"]
    failed = 0
    for name, status, seconds in rows:
        result = ""
        path = out_dir / f"{name}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            result = _one_result(name, data)
        failed += status != "ok"
        lines.append(f"| {name} | {status} | {seconds} | {result} |")
    rates = []
    for path in sorted(out_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "samples_per_second" in data:
            rates.append(f"| {path.stem} | {data['samples_per_second']:.0f} |")
    if rates:
        lines += ["", "| run | samples/s |", "|---|---|", *rates]
    text = "\n".join(lines)
    (out_dir / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\n{len(rows) - failed} of {len(rows)} steps ok; details in {out_dir}")
    return 0 if failed == 0 else 1


def _one_result(name: str, data: Dict[str, Any]) -> str:
    if "max_diff" in data:
        return f"max diff {data['max_diff']:.1e} (tol {data['tol']:g})"
    if "auc_diff" in data:
        return "AUC diff " + ", ".join(f"{t} {d:.3f}" for t, d in data["auc_diff"].items())
    if "finite_check_off" in data:
        on, off = data["finite_check_on"]["per_step"], data["finite_check_off"]["per_step"]
        return (
            f"syncs/step {on:.1f} (check on), {off:.1f} (off); peak {data.get('peak_mb', 0):.0f} MB"
        )
    if "max_row_change" in data:
        return f"row change NONE {data['max_row_change']['NONE']:.1e}, L2 {data['max_row_change']['L2']:.1e}"
    if "fbgemm_variant" in data:
        return f"torch {data['torch']} cuda {data['torch_cuda']} fbgemm {data['fbgemm_variant']} {data.get('gpu', '')}"
    if "samples_per_second" in data:
        peak = data.get("gpu_peak_mb_per_rank")
        plan = (data.get("plan_mb_per_rank") or {}).get("hbm")
        mem = f"; peak {peak} MB vs plan hbm {[round(x) for x in plan]} MB" if peak and plan else ""
        return f"{data['samples_per_second']:.0f} samples/s{mem}"
    return ""


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stack")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--require-cuda", action="store_true")
    s = sub.add_parser("smoke")
    s.add_argument("spec", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--set", dest="overrides", action="append", default=[])
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--steps", type=int, default=3)
    s = sub.add_parser("rows")
    s.add_argument("spec", type=Path)
    s.add_argument("--set", dest="overrides", action="append", default=[])
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("l2")
    s.add_argument("--device", default="cuda")
    s.add_argument("--out", type=Path, required=True)
    for name in ("same", "near", "scores"):
        s = sub.add_parser(name)
        s.add_argument("a", type=Path)
        s.add_argument("b", type=Path)
        s.add_argument("--tol", type=float, required=True)
        s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("finite")
    s.add_argument("metrics", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("plain")
    s.add_argument("--device", default="cuda")
    s.add_argument("--batch", type=int, default=512)
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summary")
    s.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    return {
        "stack": cmd_stack,
        "smoke": cmd_smoke,
        "l2": cmd_l2,
        "rows": cmd_rows,
        "same": cmd_same,
        "near": cmd_near,
        "finite": cmd_finite,
        "scores": cmd_scores,
        "plain": cmd_plain,
        "summary": cmd_summary,
    }[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
