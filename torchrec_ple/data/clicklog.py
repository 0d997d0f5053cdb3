"""Synthetic click logs of any size, written to Parquet chunk by chunk.

A benchmark and test dataset for the streaming data path: large-cardinality ids, a
multi-hot history, numerics, and three tasks with different sample spaces:

* ``click`` (CTR): 0/1 on every row;
* ``buy`` (CVR): 0/1 on clicked rows only, null elsewhere;
* ``watch_time``: a positive regression target on every row.

Labels carry signal from the ids and the numerics. Every id has hidden biases computed
by hashing the id (no table of ``num_users`` biases is ever built), so the ground truth is
the same for every ``seed``: train and validation files written with different seeds
share it. Memory stays bounded by ``chunk_rows`` whatever the number of rows.

Usage::

    python -m torchrec_ple.data.clicklog --rows 2000000 --out data/clicklog
    # -> data/clicklog/train/part-*.parquet, data/clicklog/validation/part-*.parquet
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_ple.data.synthetic import sigmoid

SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("history", pa.list_(pa.int64())),
        ("price", pa.float64()),
        ("hour", pa.int64()),
        ("dwell", pa.float64()),
        ("click", pa.int64()),
        ("buy", pa.int64()),
        ("watch_time", pa.float64()),
    ]
)

# Salts of the hidden per-id biases (fixed: the ground truth does not depend on the seed).
_USER_CTR, _ITEM_CTR, _USER_CVR, _ITEM_WATCH = 1, 2, 3, 4
# A prime multiplier scattering Zipf ranks over the id space (a bijection modulo N when
# coprime with N), so popular ids are not simply the small ones.
_SCATTER = 2_654_435_761
DESCRIPTION = "Write synthetic click logs (CTR, CVR on clicks, watch time) as Parquet."


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a cheap, well-mixed uint64 -> uint64 hash (wraps modulo 2^64)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def id_bias(ids: np.ndarray, salt: int) -> np.ndarray:
    """A hidden N(0, 1)-like bias per id, from a hash of (id, salt).

    Args:
        ids (np.ndarray): int64 ids, any shape.
        salt (int): which bias (one per role).

    Returns:
        np.ndarray: float64 of ``ids``' shape, mean 0 and variance 1 (Irwin-Hall sum of
        four 16-bit uniforms from one hash: close to normal, bounded by +-3.46).
    """
    key = np.uint64((salt * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF)  # Python ints: no overflow
    z = _splitmix64(ids.astype(np.uint64) ^ key)
    mask = np.uint64(0xFFFF)
    u = sum(((z >> np.uint64(16 * i)) & mask).astype(np.float64) for i in range(4))
    return (u / 65536.0 - 2.0) * math.sqrt(3.0)


def _zipf_ids(rng: np.random.Generator, n: int, cardinality: int, a: float) -> np.ndarray:
    """Ids in [0, cardinality) with a Zipf-like (power law ``rank^-a``) popularity.

    Inverse CDF of a continuous power law on [1, cardinality + 1), floored to a rank, then
    scattered: O(n) memory, nothing of size ``cardinality``.
    """
    u = rng.random(n)
    top = (cardinality + 1.0) ** (1.0 - a)
    ranks = np.floor((1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - a))).astype(np.int64) - 1
    ranks = np.clip(ranks, 0, cardinality - 1)
    # rank * _SCATTER must fit in int64: scatter up to 3e9 ids, beyond that keep rank order.
    scatter = math.gcd(_SCATTER, cardinality) == 1 and cardinality < 3_000_000_000
    mult = _SCATTER if scatter else 1
    return (ranks * mult) % cardinality


def clicklog_chunk(
    rng: np.random.Generator,
    n: int,
    first_event_id: int,
    num_users: int,
    num_items: int,
    max_history: int = 20,
) -> pa.Table:
    """``n`` rows of click log (vectorized).

    Args:
        rng (np.random.Generator): row randomness.
        n (int): rows.
        first_event_id (int): ``event_id`` of the first row (ids are consecutive).
        num_users (int): user id cardinality.
        num_items (int): item id cardinality.
        max_history (int): longest history list (lengths uniform in [0, max_history]).

    Returns:
        pa.Table: the rows, with :data:`SCHEMA`.
    """
    # Users less skewed than items (the top user has ~2% of rows, the top item ~6%).
    user = _zipf_ids(rng, n, num_users, 0.9)
    item = _zipf_ids(rng, n, num_items, 1.05)
    hist_len = rng.integers(0, max_history + 1, size=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(hist_len, out=offsets[1:])
    hist = _zipf_ids(rng, int(offsets[-1]), num_items, 1.05)
    hour = rng.integers(0, 24, size=n)
    price = np.exp(rng.normal(3.0, 1.0, size=n))
    u_ctr = id_bias(user, _USER_CTR)
    i_ctr = id_bias(item, _ITEM_CTR)
    # Engaged users dwell longer; 5% of dwell times are missing (tracking gaps).
    dwell = np.exp(rng.normal(2.0 + 0.3 * u_ctr, 0.8))
    dwell_missing = rng.random(n) < 0.05

    row_of_hist = np.repeat(np.arange(n), hist_len)
    hist_mean = np.bincount(row_of_hist, weights=id_bias(hist, _ITEM_CTR), minlength=n)
    hist_mean /= np.maximum(hist_len, 1)
    log_price = np.log(price) - 3.0
    click_logit = (
        -1.6
        + 0.8 * u_ctr
        + 0.8 * i_ctr
        + 0.6 * hist_mean
        + 0.5 * np.sin(2 * np.pi * hour / 24.0)
        - 0.3 * log_price
    )
    click = (rng.random(n) < sigmoid(click_logit)).astype(np.int64)
    buy_logit = -1.0 + 0.8 * id_bias(user, _USER_CVR) + 0.5 * i_ctr - 0.6 * log_price
    buy = (rng.random(n) < sigmoid(buy_logit)).astype(np.int64)
    watch = np.exp(0.5 * id_bias(item, _ITEM_WATCH) + 0.2 * u_ctr + 0.3 * rng.standard_normal(n))

    return pa.table(
        {
            "event_id": pa.array(np.arange(first_event_id, first_event_id + n, dtype=np.int64)),
            "user_id": pa.array(user),
            "item_id": pa.array(item),
            "history": pa.ListArray.from_arrays(pa.array(offsets), pa.array(hist)),
            "price": pa.array(np.round(price, 2)),
            "hour": pa.array(hour.astype(np.int64)),
            "dwell": pa.array(dwell, mask=dwell_missing),
            "click": pa.array(click),
            "buy": pa.array(buy, mask=click == 0),  # defined on clicked rows only
            "watch_time": pa.array(watch),
        },
        schema=SCHEMA,
    )


def write_clicklog(
    out_dir: str | Path,
    rows: int,
    files: int = 4,
    row_group_size: int = 65_536,
    num_users: int = 10_000_000,
    num_items: int = 1_000_000,
    seed: int = 0,
    chunk_rows: int = 1_000_000,
    max_history: int = 20,
) -> List[Path]:
    """Write ``rows`` rows of synthetic click log as ``files`` Parquet files.

    Existing ``part-*.parquet`` files in ``out_dir`` are removed first, so a directory
    never mixes two generations.

    Args:
        out_dir (str | Path): output directory (created).
        rows (int): total rows, split as evenly as possible over the files.
        files (int): number of files. Default: 4.
        row_group_size (int): rows per Parquet row group. Default: 65_536.
        num_users (int): user id cardinality. Default: 10M.
        num_items (int): item id cardinality (history too). Default: 1M.
        seed (int): row randomness; the hidden per-id biases do not depend on it.
            Default: 0.
        chunk_rows (int): rows generated and held in memory at a time (rounded down to a
            multiple of ``row_group_size``); about 600 MB at the default. Default: 1M.
        max_history (int): longest history list. Default: 20.

    Returns:
        List[Path]: the files written, in order; ``event_id`` runs 0..rows-1 across them.
    """
    if rows < 0 or files < 1 or row_group_size < 1 or num_users < 1 or num_items < 1:
        raise ValueError("rows >= 0 and files, row_group_size, num_users, num_items >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    # Whole row groups per chunk, so no small row group appears at each chunk boundary.
    chunk = max(1, chunk_rows // row_group_size) * row_group_size
    base, extra = divmod(rows, files)
    paths: List[Path] = []
    event = 0
    for f in range(files):
        n_file = base + (1 if f < extra else 0)
        path = out / f"part-{f:05d}.parquet"
        with pq.ParquetWriter(path, SCHEMA) as writer:
            for c, start in enumerate(range(0, n_file, chunk)):
                n = min(chunk, n_file - start)
                rng = np.random.default_rng([seed, f, c])
                table = clicklog_chunk(rng, n, event, num_users, num_items, max_history)
                writer.write_table(table, row_group_size=row_group_size)
                event += n
        paths.append(path)
    return paths


def summarize(paths: Sequence[Path]) -> Dict[str, float]:
    """Rows, row groups, CTR and CVR of written files (reads only the label columns)."""
    rows = groups = clicks = buys = 0
    for p in paths:
        pf = pq.ParquetFile(p)
        groups += pf.metadata.num_row_groups
        t = pf.read(columns=["click", "buy"])
        rows += t.num_rows
        clicks += int(np.asarray(t.column("click")).sum())
        buys += int(np.nansum(t.column("buy").to_numpy(zero_copy_only=False).astype(np.float64)))
    return {
        "rows": rows,
        "row_groups": groups,
        "ctr": clicks / max(rows, 1),
        "cvr": buys / max(clicks, 1),
    }


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options, on ``p`` (a parser of its own or a CLI subcommand)."""
    p.add_argument("--rows", type=int, required=True, help="training rows, e.g. 2000000")
    p.add_argument("--out", type=Path, required=True, help="folder for train/ and validation/")
    p.add_argument("--validation-rows", type=int, default=None, help="default: rows // 10")
    p.add_argument("--files", type=int, default=4, help="training files (validation: 1 per 1M)")
    p.add_argument("--row-group-size", type=int, default=65_536)
    p.add_argument("--num-users", type=int, default=10_000_000)
    p.add_argument("--num-items", type=int, default=1_000_000)
    p.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows held in memory at once")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    """Write ``<out>/train`` and ``<out>/validation`` as :func:`add_arguments` parsed them."""
    n_valid = args.rows // 10 if args.validation_rows is None else args.validation_rows
    common = dict(
        row_group_size=args.row_group_size,
        num_users=args.num_users,
        num_items=args.num_items,
        chunk_rows=args.chunk_rows,
    )
    t0 = time.perf_counter()
    splits = [("train", args.rows, args.files, args.seed)]
    if n_valid > 0:
        # Another seed: other rows, the same hidden ground truth.
        splits.append(("validation", n_valid, max(1, -(-n_valid // 1_000_000)), args.seed + 1))
    for name, n, files, seed in splits:
        paths = write_clicklog(args.out / name, n, files=files, seed=seed, **common)  # type: ignore[arg-type]
        s = summarize(paths)
        print(
            f"{args.out / name}: {s['rows']:.0f} rows in {len(paths)} files, "
            f"{s['row_groups']:.0f} row groups, CTR {s['ctr']:.3f}, CVR {s['cvr']:.3f}"
        )
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m torchrec_ple.data.clicklog --rows N --out DIR``."""
    p = argparse.ArgumentParser(
        prog="torchrec-ple generate-clicklog",
        description=DESCRIPTION,
    )
    return run(add_arguments(p).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
