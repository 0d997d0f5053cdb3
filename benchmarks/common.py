"""Shared benchmark helpers: threads, alternating timed rounds, medians, tables, JSON, data.

Nothing here imports torch at module level. Importing it imports ``torchrec_ple`` first, which
chooses ``OMP_WAIT_POLICY`` (read when libgomp loads, at ``import torch``) unless it is set.
"""

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------ CLI and threads


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output (default: benchmarks/results/{name}.json; "
        f"{name}.quick.json with --quick)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (odd is best)")
    return p


def out_path(name: str, args: argparse.Namespace) -> Path:
    """Where a benchmark writes its JSON."""
    if args.out is not None:
        return Path(args.out)
    return RESULTS_DIR / (f"{name}.quick.json" if args.quick else f"{name}.json")


def apply_threads(threads: Optional[int]) -> None:
    """Set torch's intra-op threads (``None``: leave torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def thread_info() -> Dict[str, Any]:
    """The thread settings that decide CPU speed."""
    info: Dict[str, Any] = {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if "torch" in sys.modules:
        import torch

        info["torch_num_threads"] = torch.get_num_threads()
        info["torch_num_interop_threads"] = torch.get_num_interop_threads()
    return info


def thread_line() -> str:
    """One printable line of :func:`thread_info`."""
    return ", ".join(f"{k}={v}" for k, v in thread_info().items())


def _version(module: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001 - absent package: no version
        return None


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> Dict[str, Any]:
    """CPU, versions and thread settings, recorded with every result."""
    try:
        affinity: Optional[int] = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    info: Dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchrec": _version("torchrec"),
        "fbgemm_gpu": _version("fbgemm-gpu-cpu") or _version("fbgemm-gpu"),
        "numpy": np.__version__,
    }
    info.update(thread_info())
    return info


# ------------------------------------------------------------------------------ timing


def median(xs: Sequence[float]) -> float:
    """Median (NaN for no value)."""
    return float(statistics.median(xs)) if xs else float("nan")


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[r] / b[r]``: both measured in the same round, so a slow
    period of the machine hits both sides of each ratio."""
    return median([x / y for x, y in zip(a, b) if y > 0])


def time_rate(
    fn: Callable[[], Any], work: float, min_seconds: float = 0.5, min_calls: int = 3
) -> float:
    """Work per second of repeated ``fn()`` calls (``work`` units each), timed for at least
    ``min_seconds`` and ``min_calls`` calls."""
    calls = 0
    t0 = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= min_calls and elapsed >= min_seconds:
            return calls * work / elapsed


def alternate(
    contenders: Mapping[str, Callable[[], float]],
    rounds: int,
    warmup: bool = True,
    log: Optional[Callable[[str], None]] = print,
) -> Dict[str, List[float]]:
    """Run every contender once per round, in an order rotated each round.

    Each callable runs one measurement and returns a rate (higher is better). Rotating the
    order keeps any contender from always running first, or always after the same one.

    Returns:
        Dict[str, List[float]]: the rates of each contender, round by round.
    """
    names = list(contenders)
    if warmup:
        for n in names:
            contenders[n]()
    rates: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            rates[n].append(float(contenders[n]()))
        if log is not None:
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {rates[n][-1]:,.0f}" for n in names))
    return rates


# ------------------------------------------------------------------------------ output


def fmt(x: Any, digits: int = 0) -> str:
    """A table cell: thousands separators for numbers, ``-`` for missing."""
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells already formatted as strings or numbers)."""
    body = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def write_json(path: Path, name: str, args: argparse.Namespace, results: Dict[str, Any]) -> Path:
    """Write ``results`` with the command's arguments and the machine's description."""
    payload = {
        "benchmark": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([f"python -m benchmarks.{name}"] + sys.argv[1:]),
        "args": vars(args),
        "machine": machine_info(),
        **results,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")
    return path


def target_line(label: str, value: float, target: float, unit: str = "x") -> str:
    """``label: value (target >= t): PASS|MISS``."""
    ok = value >= target
    return f"{label}: {value:.2f}{unit} (target >= {target:g}{unit}): {'PASS' if ok else 'MISS'}"


# ------------------------------------------------------------------------------ census-like data

CENSUS_NUMERIC = [f"n{i}" for i in range(7)]
CENSUS_CATEGORICAL = [f"c{i}" for i in range(32)]
CENSUS_LABELS = ["label_a", "label_b"]


def census_cardinalities(num_columns: int = 32, total: int = 500) -> List[int]:
    """Distinct values per categorical column: 2 up to ~29, about ``total`` in all."""
    raw = np.linspace(2, 2 * total / num_columns - 2, num_columns)
    return [int(round(v)) for v in raw]


def make_census_table(rows: int, seed: int = 0) -> Any:
    """A census-like table: 7 numeric and 32 string categorical columns (~500 distinct
    values in all, Zipf-like frequencies) and two correlated binary labels that depend on
    both (so validation AUC is informative, about 0.8)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cols: Dict[str, Any] = {}
    numeric = np.stack(
        [
            rng.integers(17, 91, rows).astype(np.float64),  # age
            np.exp(rng.normal(12.0, 0.5, rows)),  # fnlwgt-like
            rng.integers(1, 17, rows).astype(np.float64),  # education years
            np.where(rng.random(rows) < 0.08, np.exp(rng.normal(8, 1, rows)), 0.0),  # gain
            np.where(rng.random(rows) < 0.05, np.exp(rng.normal(7, 0.5, rows)), 0.0),  # loss
            np.clip(rng.normal(40, 12, rows), 1, 99).round(),  # hours per week
            rng.normal(0, 1, rows),
        ],
        axis=1,
    )
    for i, name in enumerate(CENSUS_NUMERIC):
        cols[name] = numeric[:, i]
    std = (numeric - numeric.mean(0)) / numeric.std(0)
    std[:, 3:5] = np.log1p(numeric[:, 3:5]) / 5
    w_a, w_b = rng.normal(0, 0.4, 7), rng.normal(0, 0.4, 7)
    z_a, z_b = std @ w_a, std @ (0.5 * w_a + 0.87 * w_b)
    for name, card in zip(CENSUS_CATEGORICAL, census_cardinalities()):
        p = 1.0 / np.arange(1, card + 1) ** 1.1
        ids = rng.choice(card, size=rows, p=p / p.sum())
        eff_a = rng.normal(0, 0.35, card)
        eff_b = 0.5 * eff_a + 0.87 * rng.normal(0, 0.35, card)
        z_a += eff_a[ids]
        z_b += eff_b[ids]
        vocab = np.array([f"{name}_{v}" for v in range(card)], dtype=object)
        cols[name] = pa.array(vocab[ids], pa.string())
    for name, z, rate in zip(CENSUS_LABELS, (z_a, z_b), (0.25, 0.35)):
        z = (z - z.mean()) / z.std() * 1.6
        bias = np.quantile(z, 1 - rate)
        cols[name] = (rng.random(rows) < 1 / (1 + np.exp(-(z - bias)))).astype(np.int8)
    return pa.table(cols)


def write_census(
    directory: Path, train_rows: int, valid_rows: int, seed: int = 0
) -> Tuple[Path, Path]:
    """Write ``train.parquet`` and ``validation.parquet`` (one draw, split) into a folder;
    reuses files already written with the same sizes and seed."""
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"census_{train_rows}_{valid_rows}_{seed}"  # one draw of train + valid rows
    train, valid = directory / f"{stem}_train.parquet", directory / f"{stem}_validation.parquet"
    if not (train.is_file() and valid.is_file()):
        table = make_census_table(train_rows + valid_rows, seed)
        pq.write_table(table.slice(0, train_rows), train)
        pq.write_table(table.slice(train_rows), valid)
    return train, valid


def census_valid_rows(train_rows: int, valid_rows: Optional[int] = None) -> int:
    """Validation rows of the census-like data: ``valid_rows``, else a quarter of the training
    rows (at least 1000), so every benchmark reads the same files by default."""
    return valid_rows or max(train_rows // 4, 1000)


def census_spec(
    train: Path,
    valid: Path,
    batch_size: int = 1024,
    epochs: int = 1,
    embedding_optimizer: Optional[Dict[str, Any]] = None,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """The spec mapping of the census-like data: PLE, 2 levels, 1 shared + 1 task expert,
    experts [64, 32], towers [32], embedding dim 8 (input 7 + 32 * 8 = 263), Adam 1e-3."""
    features: List[Dict[str, Any]] = [
        {"name": c, "type": "categorical", "embedding": {"dim": 8}} for c in CENSUS_CATEGORICAL
    ]
    features += [{"name": n, "type": "numeric", "normalize": "standard"} for n in CENSUS_NUMERIC]
    train_section: Dict[str, Any] = {
        "batch_size": batch_size,
        "epochs": epochs,
        "dense_optimizer": {"type": "adam", "lr": 1e-3},
        "embedding_optimizer": embedding_optimizer or {"type": "adagrad", "lr": 0.05},
        "seed": 0,
        "progress": False,
    }
    if num_threads:
        train_section["num_threads"] = num_threads
    return {
        "data": {"train": {"path": str(train)}, "validation": {"path": str(valid)}},
        "features": features,
        "tasks": [{"name": n, "label": n, "type": "binary"} for n in CENSUS_LABELS],
        "model": {
            "architecture": "ple",
            "levels": 2,
            "shared_experts": 1,
            "task_experts": 1,
            "expert_dims": [64, 32],
            "tower_dims": [32],
        },
        "train": train_section,
    }


def write_yaml(path: Path, mapping: Dict[str, Any]) -> Path:
    """Write a spec mapping as YAML."""
    import yaml

    Path(path).write_text(yaml.safe_dump(mapping, sort_keys=False))
    return Path(path)


def data_dir(args_dir: Optional[Path]) -> Path:
    """The folder of generated data: ``--data-dir``, else a fixed temp folder (so repeated
    runs and the peers reuse the same files)."""
    import tempfile

    if args_dir is not None:
        return Path(args_dir)
    return Path(tempfile.gettempdir()) / "torchrec_ple_bench_data"


def run_fit_command(
    cmd: List[str], env: Mapping[str, str], out: Path, timeout: float
) -> Tuple[Optional[Dict[str, Any]], str, float]:
    """Run one ``torchrec-ple fit`` command line (``--out out``) as a subprocess.

    Returns:
        Tuple: (``out/metrics.json`` when it exited 0, else None; the log tail, with the
        exit code when it failed; wall seconds).
    """
    import subprocess

    t0 = time.perf_counter()
    try:
        r = subprocess.run(
            cmd, cwd=REPO_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout
        )
        log = (r.stdout + r.stderr)[-3000:]
        code: Optional[int] = r.returncode
    except subprocess.TimeoutExpired as e:
        log = f"timed out after {timeout:.0f}s\n" + str(e.stderr or "")[-3000:]
        code = None
    wall = time.perf_counter() - t0
    metrics_file = out / "metrics.json"
    if code == 0 and metrics_file.is_file():
        return json.loads(metrics_file.read_text()), log, wall
    return None, f"exit code {code}\n{log}", wall
