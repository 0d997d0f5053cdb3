"""Process scaling: ``torchrun`` with 1 and 2 processes (1 thread each) on the same data.

Each run is ``python -m torch.distributed.run --standalone --nproc_per_node=N -m torchrec_ple
fit SPEC --out DIR --set ...`` on the census-like Parquet of ``benchmarks.fit``, with
``OMP_NUM_THREADS=T`` (each process chooses ``OMP_WAIT_POLICY`` from processes x threads vs
cores, unless it is set in the environment); samples/s is read from the run's
``metrics.json`` (``metrics["train"]["samples_per_second"]``, all ranks together). Configs
alternate in rounds; a config that fails is reported with the tail of its log and dropped
from later rounds, and the others still run.

By default the batch is 1024 per process (weak scaling, as DMP is used);
``--fixed-global-batch`` splits 1024 across the processes instead.

    python -m benchmarks.scaling [--quick] [--rows N] [--configs 1x1,2x1] [--rounds R]
"""

# ruff: noqa: E402
# The package chooses OMP_WAIT_POLICY unless set; each torchrun worker chooses its own again.
import torchrec_ple  # noqa: F401

# isort: split
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.common import (
    base_parser,
    census_spec,
    census_valid_rows,
    data_dir,
    fmt,
    markdown_table,
    median,
    out_path,
    paired_ratio,
    run_fit_command,
    write_census,
    write_json,
    write_yaml,
)


def parse_config(text: str) -> Tuple[int, int]:
    """``"2x1"`` -> (2 processes, 1 thread each)."""
    procs, _, threads = text.partition("x")
    return int(procs), int(threads or 1)


def launch(
    spec: Path, procs: int, threads: int, batch: int, timeout: float
) -> Tuple[Optional[Dict[str, Any]], str, float]:
    """One torchrun fit: (metrics or None, log tail, wall seconds)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads))
    env.pop("LOCAL_WORLD_SIZE", None)  # torchrun sets it
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            "-m",
            "torchrec_ple",
            "fit",
            str(spec),
            "--out",
            str(out),
            "--set",
            f"train.num_threads={threads}",
            "--set",
            f"train.batch_size={batch}",
            "--set",
            "train.progress=false",
        ]
        return run_fit_command(cmd, env, out, timeout)


def main(argv: Optional[List[str]] = None) -> int:
    p = base_parser("scaling", __doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="training rows (200000)")
    p.add_argument("--configs", default="1x1,2x1", help="PROCSxTHREADS list, e.g. 1x1,2x1,1x2")
    p.add_argument("--fixed-global-batch", action="store_true", help="1024 split over processes")
    p.add_argument("--data-dir", type=Path, default=None, help="where the Parquet files go")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (1800)")
    args = p.parse_args(argv)
    rows = args.rows or (4000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 3)
    timeout = args.timeout or (600 if args.quick else 1800)
    folder = data_dir(args.data_dir)
    train, valid = write_census(folder, rows, census_valid_rows(rows), seed=0)
    spec = write_yaml(folder / f"scaling_{rows}_spec.yaml", census_spec(train, valid))
    print(f"OMP_WAIT_POLICY: each process's own choice (unless set); {rows:,} rows; spec {spec}")

    configs = [parse_config(c) for c in args.configs.split(",")]
    names = [f"{n}x{t}" for n, t in configs]
    rates: Dict[str, List[float]] = {n: [] for n in names}
    failures: Dict[str, str] = {}
    last: Dict[str, Dict[str, Any]] = {}
    walls: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(configs)
        for (procs, threads), name in list(zip(configs, names))[k:] + list(zip(configs, names))[:k]:
            if name in failures:
                continue
            batch = 1024 // procs if args.fixed_global_batch else 1024
            metrics, log, wall = launch(spec, procs, threads, batch, timeout)
            walls[name].append(wall)
            if metrics is None:
                failures[name] = log
                print(f"round {r + 1}: {name} FAILED ({wall:.0f}s):\n{log}\n")
                continue
            last[name] = metrics
            rates[name].append(float(metrics["train"]["samples_per_second"]))
            print(f"round {r + 1}: {name} {rates[name][-1]:,.0f} samples/s ({wall:.0f}s wall)")

    base = names[0]
    headers = ["config", "processes", "threads each", "batch per process", "samples/s"]
    headers += [f"x {base}", "AUC task 1", "AUC task 2", "status"]
    table_rows = []
    for (procs, threads), name in zip(configs, names):
        batch = 1024 // procs if args.fixed_global_batch else 1024
        m = last.get(name)
        aucs = [t.get("auc") for t in m["tasks"].values()] if m else [None, None]
        ok = name not in failures
        ratio = paired_ratio(rates[name], rates[base]) if ok and rates[base] else None
        table_rows.append(
            [
                name,
                procs,
                threads,
                batch,
                fmt(median(rates[name])) if rates[name] else "-",
                fmt(ratio, 2) + "x" if ratio else "-",
                fmt(aucs[0], 4),
                fmt(aucs[1] if len(aucs) > 1 else None, 4),
                "ok" if ok else "FAILED (see above / JSON)",
            ]
        )
    print()
    print(markdown_table(headers, table_rows))
    results = {
        "rows": rows,
        "configs": names,
        "samples_per_second": rates,
        "median_samples_per_second": {n: median(v) for n, v in rates.items()},
        "wall_seconds": walls,
        "failures": failures,
        "tasks": {n: m["tasks"] for n, m in last.items()},
        "train": {n: m["train"] for n, m in last.items()},
    }
    path = write_json(out_path("scaling", args), "scaling", args, results)
    print(f"wrote {path}")
    return 1 if len(failures) == len(names) else 0


if __name__ == "__main__":
    raise SystemExit(main())
