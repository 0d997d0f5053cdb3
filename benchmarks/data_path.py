"""Data path: Parquet -> encoded arrays -> batches, against the training step on the same batches.

On the census-like Parquet (as ``benchmarks.fit``), phases are timed alternately in rounds:

* ``read``: ``read_table`` of the training file (the spec's columns);
* ``fit+encode``: ``FeatureTransforms.fit`` then ``encode`` (vocabularies, normalizers, ids);
* ``batches``: one epoch of ``BatchLoader`` (shuffled ``build_batch``: KJT, dense, labels);
* ``train_prebuilt``: ``TrainPipelineSparseDist`` steps over the epoch's batches, built
  beforehand (the training step alone; fresh KeyedJaggedTensor objects each run, since a
  reused one keeps the offsets and per-key lengths it computed);
* ``train_loader``: the same steps fed by the ``BatchLoader`` (as ``fit`` does).

Reported: rows/s of each phase and the data path as % of a training step: batch building
per step, and batch building plus read + fit + encode spread over one epoch's steps.
Target: <= 10%.

    python -m benchmarks.data_path [--quick] [--rows N] [--threads N] [--rounds R]
"""

import os

os.environ.setdefault("LOCAL_WORLD_SIZE", "1")

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
import argparse
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from benchmarks.common import (
    alternate,
    apply_threads,
    base_parser,
    census_spec,
    census_valid_rows,
    data_dir,
    fmt,
    markdown_table,
    median,
    out_path,
    paired_ratio,
    thread_line,
    write_census,
    write_yaml,
)
from benchmarks.common import write_json as write_result
from benchmarks.fit import quiet_logs
from torchrec_ple.data.batch import BatchLoader, MultiTaskBatch
from torchrec_ple.data.sources import read_table, spec_columns
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec import Spec, load_spec
from torchrec_ple.threads import describe_threads
from torchrec_ple.train.distributed import init_distributed
from torchrec_ple.train.trainer import build_state

TARGET_PERCENT = 10.0


@dataclass
class EncodedData:
    """The census training file of one run: read, encoded and batched once.

    Args:
        spec (Spec): the loaded census spec.
        cols (List[str]): the columns the spec reads.
        table (Any): the training rows as read (a pyarrow Table).
        transforms (FeatureTransforms): fitted on ``table``.
        loader (BatchLoader): shuffled batches of the encoded rows.
        prebuilt (List[MultiTaskBatch]): one epoch of the loader's batches, built beforehand.
    """

    spec: Spec
    cols: List[str]
    table: Any
    transforms: FeatureTransforms
    loader: BatchLoader
    prebuilt: List[MultiTaskBatch]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line: the common benchmark options plus rows, batch and data folder."""
    p = base_parser("data_path", __doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=None, help="training rows (200000)")
    p.add_argument("--batch", type=int, default=1024, help="batch size")
    p.add_argument("--data-dir", type=Path, default=None, help="where the Parquet files go")
    return p.parse_args(argv)


def prepare_data(args: argparse.Namespace, rows: int) -> EncodedData:
    """Write (or reuse) the census Parquet and its spec; read, fit, encode and batch it."""
    folder = data_dir(args.data_dir)
    train_path, valid_path = write_census(folder, rows, census_valid_rows(rows), seed=0)
    spec_path = write_yaml(
        folder / f"data_path_{rows}_spec.yaml",
        census_spec(train_path, valid_path, batch_size=args.batch, num_threads=args.threads),
    )
    spec = load_spec(spec_path)
    cols = spec_columns(spec)
    table = read_table(spec.data.train, cols)
    transforms = FeatureTransforms.fit(spec, table)
    loader = BatchLoader(transforms.encode(table), args.batch, shuffle=True, seed=0)
    return EncodedData(spec, cols, table, transforms, loader, list(loader))


def fresh(batches: List[MultiTaskBatch]) -> List[MultiTaskBatch]:
    """New batch objects over the same tensors: a KeyedJaggedTensor caches what it
    computes (offsets, lengths per key) on first use, and a reused one would skip that
    per-step work."""
    out = []
    for b in batches:
        kjt = b.sparse
        sparse = KeyedJaggedTensor(
            keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(), stride=kjt.stride()
        )
        out.append(MultiTaskBatch(b.dense, sparse, b.labels, b.masks))
    return out


def train_pipeline(data: EncodedData) -> TrainPipelineSparseDist:
    """The training step of ``fit``: the spec's sharded model and optimizer in a pipeline."""
    ctx = init_distributed()
    state = build_state(data.spec, data.transforms, ctx)
    state.model.train()
    return TrainPipelineSparseDist(state.model, state.optimizer, ctx.device)


def run_steps(pipeline: TrainPipelineSparseDist, batches: Iterator[MultiTaskBatch]) -> int:
    """Train on every batch of ``batches``; the number of steps."""
    n = 0
    while True:
        try:
            pipeline.progress(batches)
        except StopIteration:
            break
        n += 1
    pipeline.detach()
    return n


def phase_contenders(
    data: EncodedData,
    pipeline: TrainPipelineSparseDist,
    rows: int,
    seconds: Dict[str, List[float]],
) -> Dict[str, Callable[[], float]]:
    """One timed callable per phase (rows/s); each appends its seconds to ``seconds[name]``."""

    def timed(name: str, work: int, fn: Callable[[], Any]) -> Callable[[], float]:
        def once() -> float:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            seconds.setdefault(name, []).append(dt)
            return work / dt

        return once

    def timed_prebuilt() -> Callable[[], float]:
        def once() -> float:
            batches = fresh(data.prebuilt)  # not timed
            return timed("train_prebuilt", rows, lambda: run_steps(pipeline, iter(batches)))()

        return once

    epoch = itertools.count()

    def iterate_loader() -> None:
        data.loader.set_epoch(next(epoch))
        for _ in data.loader:
            pass

    def train_loader() -> None:
        data.loader.set_epoch(next(epoch))
        run_steps(pipeline, iter(data.loader))

    spec, table = data.spec, data.table
    return {
        "read": timed("read", rows, lambda: read_table(spec.data.train, data.cols)),
        "fit+encode": timed(
            "fit+encode", rows, lambda: FeatureTransforms.fit(spec, table).encode(table)
        ),
        "batches": timed("batches", rows, iterate_loader),
        "train_prebuilt": timed_prebuilt(),
        "train_loader": timed("train_loader", rows, train_loader),
    }


def summarize(
    rates: Dict[str, List[float]], seconds: Dict[str, List[float]], steps: int
) -> Dict[str, Any]:
    """Median seconds per phase and the data path as % of a training step."""
    med = {n: median(s) for n, s in seconds.items()}
    step_s = med["train_prebuilt"] / steps
    batch_s = med["batches"] / steps
    load_s = med["read"] + med["fit+encode"]
    return {
        "median_seconds": med,
        "step_s": step_s,
        "batch_s": batch_s,
        "per_step_pct": 100 * batch_s / step_s,
        "epoch_pct": 100 * (batch_s + load_s / steps) / step_s,
        "in_loop_pct": 100 * (paired_ratio(rates["train_prebuilt"], rates["train_loader"]) - 1),
    }


def print_report(
    rates: Dict[str, List[float]], s: Dict[str, Any], rows: int, batch: int, steps: int
) -> None:
    """The phases' table and the verdict lines."""
    med, step_s = s["median_seconds"], s["step_s"]
    headers = ["phase", "rows/s", "seconds (median)", "ms per batch", "% of a train step"]
    table_rows = []
    for n in rates:
        ms = 1000 * med[n] / steps
        pct = 100 * (med[n] / steps) / step_s
        table_rows.append([n, fmt(median(rates[n])), fmt(med[n], 3), fmt(ms, 2), f"{pct:.1f}%"])
    print()
    print(markdown_table(headers, table_rows))
    print()
    print(f"{rows:,} rows, batch {batch}, {steps} steps per epoch")
    print(f"batch building per step: {s['per_step_pct']:.1f}% of a training step")
    print(
        f"measured in the loop (train_loader vs train_prebuilt, paired): {s['in_loop_pct']:+.1f}%"
    )
    verdict = "PASS" if s["epoch_pct"] <= TARGET_PERCENT else "MISS"
    print(
        f"read + fit + encode spread over 1 epoch + batch building: {s['epoch_pct']:.1f}% of a "
        f"training step (target <= {TARGET_PERCENT:g}%): {verdict}"
    )


def main(argv: Optional[List[str]] = None) -> int:
    """Time the data path's phases against the training step; print and write the results."""
    args = parse_args(argv)
    quiet_logs()
    apply_threads(args.threads)
    rows = args.rows or (4000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 5)
    print(thread_line())
    print(describe_threads(torch.get_num_threads()))

    data = prepare_data(args, rows)
    steps = len(data.loader)
    pipeline = train_pipeline(data)
    seconds: Dict[str, List[float]] = {}
    rates = alternate(phase_contenders(data, pipeline, rows, seconds), rounds, warmup=True)
    for name in seconds:  # drop the warm-up call
        seconds[name] = seconds[name][1:]

    s = summarize(rates, seconds, steps)
    print_report(rates, s, rows, args.batch, steps)
    results = {
        "rows": rows,
        "batch": args.batch,
        "steps_per_epoch": steps,
        "rows_per_second": rates,
        "seconds": seconds,
        "median_seconds": s["median_seconds"],
        "train_step_ms": 1000 * s["step_s"],
        "batch_build_ms": 1000 * s["batch_s"],
        "batch_build_percent_of_step": s["per_step_pct"],
        "in_loop_overhead_percent": s["in_loop_pct"],
        "data_path_percent_of_step_one_epoch": s["epoch_pct"],
        "target_percent": TARGET_PERCENT,
    }
    path = write_result(out_path("data_path", args), "data_path", args, results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
