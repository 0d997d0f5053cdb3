"""Scale curves: samples/s and memory per rank as the tables grow and as the batch grows.

Both curves run the real ``torchrec-ple fit`` on ``feature_specs/clicklog.yaml`` (streaming
Parquet from ``torchrec-ple generate-clicklog``; PLE 2 levels, 1+1 experts [64, 32], towers
[32]; ``user_id`` dim 16 row-wise, ``items`` 1M x 16 shared by ``item_id`` and ``history``;
fused row-wise Adagrad), each configuration in its own process(es), bounded by
``train.max_steps``:

* tables: ``user_id`` hashed into 1M, 10M and 50M rows (``--set features[0].hash_buckets=N``),
  row-wise sharded over 2 processes under ``torchrun`` (1 thread each, batch 2048 per
  process);
* batch: 256 up to 16k in one process (``user_id`` 1M rows, the cores' threads), the step
  budget chosen so that each point trains about the same number of samples (within bounds).

samples/s is ``metrics["train"]["samples_per_second"]`` (the training loop, all ranks
together); memory per rank is ``train.max_rss_mb_per_rank`` (peak RSS of the whole ``fit``:
imports, data, training, evaluation and the final checkpoint) and ``train.table_mb_per_rank``
(fp32 weights under the sharding plan). Before each run its memory need is estimated (weights +
optimizer state + a transient copy per rank, plus a fixed base per process) against
``MemAvailable`` and the free disk for its checkpoint; a run that may not fit is skipped with
the reason printed, never started.

    python -m benchmarks.scale [--quick] [--tables 1000000,10000000,50000000]
                               [--batches 256,1024,4096,16384] [--rounds R]
"""

# ruff: noqa: E402
# The package chooses OMP_WAIT_POLICY unless set; each fit process chooses its own again.
import torchrec_ple  # noqa: F401

# isort: split
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.common import (
    REPO_ROOT,
    base_parser,
    data_dir,
    fmt,
    markdown_table,
    median,
    out_path,
    run_fit_command,
    write_json,
)

SPEC = REPO_ROOT / "feature_specs" / "clicklog.yaml"
DIM = 16  # user_id and items embedding dim in the clicklog spec
ITEM_ROWS = 1_000_000  # the items table of the clicklog spec (fixed here)
BASE_MB_PER_PROCESS = 1200.0  # imports + model + data path of one fit process, measured ~600
TRANSIENT_FACTOR = 2.0  # weights + state counted twice: init / checkpoint staging headroom
MEMORY_SHARE = 0.7  # use at most this share of MemAvailable


def mem_available_mb() -> Optional[float]:
    """``MemAvailable`` from /proc/meminfo, in MB (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def table_state_mb(user_rows: int) -> float:
    """fp32 weights + row-wise Adagrad state (one float per row) of all tables, in MB."""
    rows = user_rows + ITEM_ROWS
    return rows * (DIM + 1) * 4 / 2**20


def fits(user_rows: int, procs: int, tmp: Path) -> Tuple[bool, str]:
    """Whether a run is safe to start on this machine: (ok, the estimate or the reason)."""
    state = table_state_mb(user_rows)
    need = procs * BASE_MB_PER_PROCESS + TRANSIENT_FACTOR * state
    avail = mem_available_mb()
    disk = shutil.disk_usage(tmp).free / 2**20
    text = (
        f"needs ~{need:,.0f} MB RAM (weights+state {state:,.0f} MB x{TRANSIENT_FACTOR:g} "
        f"+ {procs} x {BASE_MB_PER_PROCESS:,.0f} MB base), {avail or 0:,.0f} MB available; "
        f"checkpoint ~{state:,.0f} MB, {disk:,.0f} MB free disk"
    )
    if avail is None:
        return False, "MemAvailable unknown: " + text
    if need > MEMORY_SHARE * avail:
        return False, f"over {MEMORY_SHARE:.0%} of available memory: " + text
    if 2 * state > disk:
        return False, "not enough free disk for the final checkpoint: " + text
    return True, text


def clicklog_data(folder: Path, rows: int) -> Path:
    """Generate (or reuse) the click logs: ``folder/clicklog_<rows>/{train,validation}``."""
    target = folder / f"clicklog_{rows}"
    if (target / "done").is_file():
        return target
    validation = max(rows // 20, 2000)
    cmd = [sys.executable, "-m", "torchrec_ple", "generate-clicklog", "--rows", str(rows)]
    cmd += ["--out", str(target), "--validation-rows", str(validation), "--seed", "0"]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    (target / "done").write_text("ok\n")
    return target


def launch(
    data: Path,
    procs: int,
    threads: int,
    user_rows: int,
    batch: int,
    steps: int,
    timeout: float,
    tmp: Path,
) -> Tuple[Optional[Dict[str, Any]], str, float]:
    """One ``fit`` (under ``torchrun`` when ``procs`` > 1): (metrics or None, log tail, wall)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads))
    env.pop("LOCAL_WORLD_SIZE", None)
    out = Path(tempfile.mkdtemp(prefix="run_", dir=tmp))
    if procs > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        head += [f"--nproc_per_node={procs}", "-m", "torchrec_ple"]
    else:
        head = [sys.executable, "-m", "torchrec_ple"]
    sets = [
        f"data.train.path={data / 'train'}",
        f"data.validation.path={data / 'validation'}",
        f"features[0].hash_buckets={user_rows}",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        f"train.num_threads={threads}",
        "train.progress=false",
        "train.tensorboard=false",
    ]
    cmd = head + ["fit", str(SPEC), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    result = run_fit_command(cmd, env, out, timeout)
    shutil.rmtree(out, ignore_errors=True)  # the checkpoints of a 50M table are GBs
    return result


def batch_steps(batch: int, samples: int, lo: int, hi: int) -> int:
    """Steps so that a point trains about ``samples`` samples, within [lo, hi]."""
    return max(lo, min(hi, -(-samples // batch)))


def per_rank(values: Optional[List[float]]) -> str:
    """``a / b`` MB per rank."""
    return " / ".join(fmt(v) for v in values) if values else "-"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line: the common benchmark options plus the two curves' points."""
    p = base_parser("scale", __doc__.splitlines()[0])
    p.add_argument("--tables", default=None, help="user_id rows (1000000,10000000,50000000)")
    p.add_argument("--batches", default=None, help="one-process batches (256,1024,4096,16384)")
    p.add_argument("--table-procs", type=int, default=2, help="processes of the table curve")
    p.add_argument("--table-batch", type=int, default=2048, help="batch per process (tables)")
    p.add_argument("--table-steps", type=int, default=None, help="steps per table run (40)")
    p.add_argument("--batch-samples", type=int, default=None, help="samples per batch run")
    p.add_argument("--batch-table-rows", type=int, default=1_000_000, help="user_id rows")
    p.add_argument("--rows", type=int, default=None, help="generated training rows (400000)")
    p.add_argument("--data-dir", type=Path, default=None, help="where the click logs go")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (600)")
    p.add_argument("--skip-tables", action="store_true", help="only the batch curve")
    p.add_argument("--skip-batches", action="store_true", help="only the table curve")
    return p.parse_args(argv)


@dataclass
class Settings:
    """The sizes of one run: the options given, else the full or ``--quick`` defaults.

    Args:
        tables (List[int]): user_id rows of the table curve's points.
        batches (List[int]): batches of the batch curve's points.
        table_steps (int): steps per table run.
        batch_samples (int): samples each batch run aims to train.
        step_lo (int): fewest steps of a batch run.
        step_hi (int): most steps of a batch run.
        rows (int): generated training rows.
        rounds (int): rounds over all points.
        timeout (float): seconds per run.
        cores (Optional[int]): usable cores.
        one_threads (int): threads of a one-process run.
        table_threads (int): threads per process of a table run.
    """

    tables: List[int]
    batches: List[int]
    table_steps: int
    batch_samples: int
    step_lo: int
    step_hi: int
    rows: int
    rounds: int
    timeout: float
    cores: Optional[int]
    one_threads: int
    table_threads: int


def settings(args: argparse.Namespace) -> Settings:
    """The run's sizes from the options and ``--quick``."""
    q = args.quick
    default_tables = "100000,1000000" if q else "1000000,10000000,50000000"
    default_batches = "256,1024" if q else "256,1024,4096,16384"
    step_lo, step_hi = (2, 10) if q else (16, 200)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Settings(
        tables=[int(x) for x in (args.tables or default_tables).split(",")],
        batches=[int(x) for x in (args.batches or default_batches).split(",")],
        table_steps=args.table_steps or (5 if q else 40),
        batch_samples=args.batch_samples or (8192 if q else 262_144),
        step_lo=step_lo,
        step_hi=step_hi,
        rows=args.rows or (20_000 if q else 400_000),
        rounds=args.rounds or 1,
        timeout=args.timeout or (300 if q else 600),
        cores=cores,
        one_threads=args.threads or max(1, cores or 1),
        table_threads=args.threads or max(1, (cores or 1) // args.table_procs),
    )


def plan_points(args: argparse.Namespace, s: Settings) -> List[Dict[str, Any]]:
    """The points of both curves (tables first), each a dict that collects its results."""
    points: List[Dict[str, Any]] = []
    if not args.skip_tables:
        for n in s.tables:
            points.append(
                dict(
                    curve="tables",
                    procs=args.table_procs,
                    threads=s.table_threads,
                    user_rows=n,
                    batch=args.table_batch,
                    steps=s.table_steps,
                )
            )
    if not args.skip_batches:
        for b in s.batches:
            steps = batch_steps(b, s.batch_samples, s.step_lo, s.step_hi)
            points.append(
                dict(
                    curve="batch",
                    procs=1,
                    threads=s.one_threads,
                    user_rows=args.batch_table_rows,
                    batch=b,
                    steps=steps,
                )
            )
    for pt in points:
        pt.update(rates=[], walls=[], loads=[], metrics=None, skipped=None, failed=None)
    return points


def run_point(pt: Dict[str, Any], r: int, data: Path, timeout: float, tmp: Path) -> None:
    """Round ``r`` of one point: skipped when it may not fit, else one ``fit`` whose rate,
    wall time and load (or failure log) go into ``pt``."""
    label = f"{pt['curve']}: user_id {pt['user_rows']:,} rows, {pt['procs']} proc x "
    label += f"{pt['threads']} thr, batch {pt['batch']:,}, {pt['steps']} steps"
    if pt["skipped"] or pt["failed"]:
        return
    ok, why = fits(pt["user_rows"], pt["procs"], tmp)
    if not ok:
        pt["skipped"] = why
        print(f"SKIPPED {label}: {why}")
        return
    load = os.getloadavg()[0]
    metrics, log, wall = launch(
        data, pt["procs"], pt["threads"], pt["user_rows"], pt["batch"], pt["steps"], timeout, tmp
    )
    pt["walls"].append(wall)
    pt["loads"].append(load)
    if metrics is None:
        pt["failed"] = log
        print(f"round {r + 1}: FAILED {label} ({wall:.0f}s):\n{log}\n")
        return
    pt["metrics"] = metrics
    pt["rates"].append(float(metrics["train"]["samples_per_second"]))
    t = metrics["train"]
    print(
        f"round {r + 1}: {label}: {pt['rates'][-1]:,.0f} samples/s, peak RSS "
        f"{per_rank(t['max_rss_mb_per_rank'])} MB, tables "
        f"{per_rank(t['table_mb_per_rank'])} MB ({wall:.0f}s wall, load {load:.2f})"
    )


TABLE_HEADERS = ["curve", "user_id rows", "processes x threads", "batch / process", "steps"]
TABLE_HEADERS += ["samples/s", "x first", "table MB per rank", "peak RSS MB per rank", "wall s"]
TABLE_HEADERS += ["status"]


def report(points: List[Dict[str, Any]]) -> Tuple[List[List[Any]], List[Dict[str, Any]]]:
    """The table rows and the JSON entries of the points (rates relative to each curve's
    first measured point)."""
    table_rows: List[List[Any]] = []
    results: List[Dict[str, Any]] = []
    first: Dict[str, float] = {}
    for pt in points:
        m = pt["metrics"]
        t = m["train"] if m else {}
        rate = median(pt["rates"]) if pt["rates"] else None
        if rate and pt["curve"] not in first:
            first[pt["curve"]] = rate
        ratio = rate / first[pt["curve"]] if rate and pt["curve"] in first else None
        status = "ok"
        if pt["skipped"]:
            status = "SKIPPED: " + pt["skipped"].split(":")[0]
        elif pt["failed"]:
            status = "FAILED (see above / JSON)"
        table_rows.append(
            [
                pt["curve"],
                fmt(pt["user_rows"]),
                f"{pt['procs']} x {pt['threads']}",
                fmt(pt["batch"]),
                t.get("steps", pt["steps"]),
                fmt(rate),
                fmt(ratio, 2) + "x" if ratio else "-",
                per_rank(t.get("table_mb_per_rank")),
                per_rank(t.get("max_rss_mb_per_rank")),
                fmt(median(pt["walls"])) if pt["walls"] else "-",
                status,
            ]
        )
        results.append(point_result(pt, rate, t))
    return table_rows, results


def point_result(pt: Dict[str, Any], rate: Optional[float], t: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON entry of one point (``t``: its last run's ``train`` metrics, or empty)."""
    return {
        "curve": pt["curve"],
        "user_rows": pt["user_rows"],
        "item_rows": ITEM_ROWS,
        "processes": pt["procs"],
        "threads": pt["threads"],
        "batch_per_process": pt["batch"],
        "max_steps": pt["steps"],
        "samples_per_second": pt["rates"],
        "median_samples_per_second": rate,
        "wall_seconds": pt["walls"],
        "load_average_1m_at_start": pt["loads"],
        "skipped": pt["skipped"],
        "failed": pt["failed"],
        "train": t or None,
    }


def main(argv: Optional[List[str]] = None) -> int:
    """Run both curves' points in rounds; print the table and write the JSON."""
    args = parse_args(argv)
    s = settings(args)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    data = clicklog_data(data_dir(args.data_dir), s.rows)
    print(f"data {data} ({s.rows:,} training rows); load average at start {load0[0]:.2f}")
    need_rows = max(
        [args.table_procs * args.table_batch * s.table_steps]
        + [b * batch_steps(b, s.batch_samples, s.step_lo, s.step_hi) for b in s.batches]
    )
    if need_rows > s.rows:
        print(
            f"note: the largest point wants {need_rows:,} rows > {s.rows:,}: it stops at the epoch"
        )

    points = plan_points(args, s)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp_name:
        for r in range(s.rounds):
            for pt in points:
                run_point(pt, r, data, s.timeout, Path(tmp_name))

    table_rows, results = report(points)
    load1 = os.getloadavg()
    total = time.perf_counter() - t_start
    print()
    print(markdown_table(TABLE_HEADERS, table_rows))
    print(
        f"\n{total:.0f}s in all; load average (1 min) {load0[0]:.2f} at start, {load1[0]:.2f} at "
        f"end, on {s.cores} cores (other jobs included); peak RSS covers the whole fit"
    )
    payload = {
        "spec": str(SPEC),
        "data": str(data),
        "training_rows": s.rows,
        "rounds": s.rounds,
        "points": results,
        "total_seconds": total,
        "load_average_start": list(load0),
        "load_average_end": list(load1),
    }
    path = write_json(out_path("scale", args), "scale", args, payload)
    print(f"wrote {path}")
    ran = [pt for pt in points if not pt["skipped"]]
    return 1 if ran and all(pt["failed"] for pt in ran) else 0


if __name__ == "__main__":
    raise SystemExit(main())
