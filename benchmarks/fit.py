"""End-to-end training samples/s through ``torchrec_ple.train.trainer.fit`` (batch building,
TrainPipelineSparseDist over the DMP model, fused embedding optimizer), and validation AUC.

Datasets (alternated in rounds; medians reported):

* ``census``: census-sized synthetic Parquet (200k training rows, 7 numeric + 32 string
  categorical columns, ~500 distinct ids in all, two binary labels), PLE 2 levels, 1 shared +
  1 task expert, experts [64, 32], towers [32], embedding dim 8, batch 1024, Adam 1e-3 (dense);
  the tables use the fused fbgemm optimizer (``--embedding-optimizer``, default adagrad 0.05:
  fused Adam does not exist on CPU);
* ``adult``: UCI Adult with ``feature_specs/adult.yaml`` (``--adult-dir`` with adult.data and
  adult.test; default: the sample in tests/data/adult), batch 1024, the same model sizes.

samples/s is fit's own ``metrics["train"]["samples_per_second"]``: the training loop only
(data reading/encoding and evaluation are reported apart). Rows of ``benchmarks/results/
peers.json`` (``python -m benchmarks.peers``) are merged into the table when present.

    python -m benchmarks.fit [--quick] [--threads N] [--rounds R] [--epochs E]
                             [--adult-dir DIR] [--datasets census,adult] [--set K=V ...]
"""

import os

os.environ.setdefault("LOCAL_WORLD_SIZE", "1")

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from benchmarks.common import (
    CENSUS_LABELS,
    REPO_ROOT,
    RESULTS_DIR,
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
    thread_line,
    write_census,
    write_json,
    write_yaml,
)
from torchrec_ple.threads import describe_threads

ADULT_SAMPLE = REPO_ROOT / "tests" / "data" / "adult"
MODEL_OVERRIDES = [
    "model.architecture=ple",
    "model.levels=2",
    "model.shared_experts=1",
    "model.task_experts=1",
    "model.expert_dims=[64, 32]",
    "model.tower_dims=[32]",
]


def quiet_logs() -> None:
    """Silence the known-harmless TorchRec/fbgemm chatter (precisely, not globally)."""
    warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(fbgemm_gpu|torchrec)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def adult_files(directory: Path) -> tuple[Path, Path]:
    """(train, test) files of an Adult folder: adult.data/.test, else the test sample."""
    directory = Path(directory)
    for stem in ("adult", "adult_sample"):
        train, test = directory / f"{stem}.data", directory / f"{stem}.test"
        if train.is_file() and test.is_file():
            return train, test
    raise FileNotFoundError(f"{directory}: no adult.data/adult.test (nor adult_sample.*)")


def census_spec_file(args: Any, rows: int, valid_rows: int, epochs: int) -> Path:
    """Write (or reuse) the census-like Parquet files and a spec YAML for them."""
    folder = data_dir(args.data_dir)
    train, valid = write_census(folder, rows, valid_rows, seed=0)
    opt_type, _, lr = args.embedding_optimizer.partition(":")
    mapping = census_spec(
        train,
        valid,
        batch_size=1024,
        epochs=epochs,
        embedding_optimizer={"type": opt_type, "lr": float(lr or 0.05)},
        num_threads=args.threads,
    )
    return write_yaml(folder / f"census_{rows}_{valid_rows}_spec.yaml", mapping)


def torch_threads() -> int:
    """torch's intra-op threads now (imports torch: after the wait policy is set)."""
    import torch

    return torch.get_num_threads()


def run_fit(spec_path: Path, overrides: List[str], verbose: bool = False) -> Dict[str, Any]:
    """One ``fit`` of a spec into a throwaway folder; its ``metrics.json`` content."""
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.trainer import fit

    spec = load_spec(spec_path, overrides)
    with tempfile.TemporaryDirectory(prefix="bench_fit_") as out:
        return fit(spec, Path(out), log=print if verbose else (lambda s: None))


def load_peers(path: Optional[Path]) -> Optional[Dict[str, Any]]:
    """The peers benchmark's JSON, if there is one."""
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line: the common benchmark options plus datasets, sizes and overrides."""
    p = base_parser("fit", __doc__.splitlines()[0])
    p.add_argument("--datasets", default="census,adult", help="comma list of: census, adult")
    p.add_argument("--rows", type=int, default=None, help="census training rows (200000)")
    p.add_argument("--valid-rows", type=int, default=None, help="census validation rows (rows / 4)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (census 1; adult: its spec)")
    p.add_argument("--adult-dir", type=Path, default=ADULT_SAMPLE, help="adult.data/adult.test")
    p.add_argument("--data-dir", type=Path, default=None, help="where the Parquet files go")
    p.add_argument(
        "--embedding-optimizer",
        default="adagrad:0.05",
        help="fused table optimizer TYPE[:LR] for census (adagrad | rowwise_adagrad | sgd)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--peers", type=Path, default=RESULTS_DIR / "peers.json", help="merge these")
    p.add_argument("--verbose", action="store_true", help="print fit's own lines")
    return p.parse_args(argv)


def common_overrides(args: argparse.Namespace) -> List[str]:
    """The ``--set`` overrides of every dataset: quiet, batch 1024, the model sizes, threads."""
    common = ["train.progress=false", "train.batch_size=1024"] + MODEL_OVERRIDES
    if args.threads:
        common.append(f"train.num_threads={args.threads}")
    return common


def dataset_specs(
    args: argparse.Namespace, rows: int, valid_rows: int, census_epochs: int
) -> Dict[str, Tuple[Path, List[str]]]:
    """The wanted datasets: name -> (spec file, its own overrides)."""
    specs: Dict[str, Tuple[Path, List[str]]] = {}
    wanted = args.datasets.split(",")
    if "census" in wanted:
        specs["census"] = (census_spec_file(args, rows, valid_rows, census_epochs), [])
    if "adult" in wanted:
        train, test = adult_files(args.adult_dir)
        adult = [f"data.train.path={train}", f"data.validation.path={test}"]
        if args.epochs or args.quick:
            adult.append(f"train.epochs={args.epochs or 1}")
        specs["adult"] = (REPO_ROOT / "feature_specs" / "adult.yaml", adult)
    return specs


def measure(
    specs: Dict[str, Tuple[Path, List[str]]],
    common: List[str],
    args: argparse.Namespace,
    rounds: int,
) -> Tuple[Dict[str, List[float]], Dict[str, Dict[str, Any]], Dict[str, List[Dict[str, Any]]]]:
    """Fit every dataset once per round, alternated (overrides: ``common``, the dataset's,
    then the user's ``--set``).

    Returns:
        Tuple: (samples/s per dataset and round, the last metrics of each dataset, the train
        and task metrics of each run).
    """
    last: Dict[str, Dict[str, Any]] = {}
    runs: Dict[str, List[Dict[str, Any]]] = {n: [] for n in specs}

    def contender(name: str) -> Callable[[], float]:
        path, extra = specs[name]

        def once() -> float:
            m = run_fit(path, common + extra + args.overrides, args.verbose)
            last[name] = m
            runs[name].append({"train": m["train"], "tasks": m["tasks"]})
            return float(m["train"]["samples_per_second"])

        return once

    # No separate warm-up: every fit builds its model afresh, so each round is alike.
    rates = alternate({n: contender(n) for n in specs}, rounds, warmup=False)
    return rates, last, runs


def dataset_row(name: str, r: List[float], m: Dict[str, Any]) -> List[Any]:
    """The table row of one dataset: its rates over rounds and its last metrics."""
    aucs = [t.get("auc") for t in m["tasks"].values()]
    counts = [t.get("count") for t in m["tasks"].values()]
    return [
        f"{name} (torchrec-ple)",
        fmt(m["data"]["train"]["rows"]),
        m["train"]["epochs"],
        fmt(median(r)),
        f"{fmt(min(r))} .. {fmt(max(r))}",
        fmt(aucs[0], 4),
        fmt(aucs[1] if len(aucs) > 1 else None, 4),
        fmt(m["train"]["data_seconds"], 1),
        fmt(counts[0]),
    ]


def peer_rows(peers: Dict[str, Any]) -> List[List[Any]]:
    """Table rows of the peers benchmark's contenders (torchrec-ple's own row left out)."""
    rows = []
    for name, pr in peers.get("results", {}).items():
        if name == "torchrec-ple":
            continue
        aucs = [pr.get("auc", {}).get(t) for t in CENSUS_LABELS]
        ratio = pr.get("torchrec_ple_over_peer")
        rows.append(
            [
                f"census ({name}, peers.py run)",
                fmt(pr.get("train_rows")),
                pr.get("epochs", "-"),
                fmt(pr.get("median_samples_per_second")),
                f"torchrec-ple / {name}: {fmt(ratio, 2)}x",
                fmt(aucs[0], 4),
                fmt(aucs[1], 4),
                "-",
                "-",
            ]
        )
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """Fit the datasets in alternating rounds; print the table and write the JSON."""
    args = parse_args(argv)
    quiet_logs()
    apply_threads(args.threads)
    rows = args.rows or (4000 if args.quick else 200_000)
    valid_rows = census_valid_rows(rows, args.valid_rows)
    rounds = args.rounds or (1 if args.quick else 3)
    census_epochs = args.epochs or 1
    print(thread_line())
    print(describe_threads(torch_threads()))

    common = common_overrides(args)
    specs = dataset_specs(args, rows, valid_rows, census_epochs)
    rates, last, runs = measure(specs, common, args, rounds)

    headers = ["dataset", "rows", "epochs", "samples/s (median)", "min .. max"]
    headers += ["AUC task 1", "AUC task 2", "prep s", "eval n"]
    table_rows = []
    results: Dict[str, Any] = {}
    for name, r in rates.items():
        m = last[name]
        table_rows.append(dataset_row(name, r, m))
        results[name] = {
            "samples_per_second": r,
            "median_samples_per_second": median(r),
            "tasks": m["tasks"],
            "train_rows": m["data"]["train"]["rows"],
            "model": m["model"],
            "runs": runs[name],
        }
    peers = load_peers(args.peers)
    if peers and "census" in results:
        table_rows += peer_rows(peers)
    print()
    print(markdown_table(headers, table_rows))
    if peers and peers.get("census_rows") not in (None, rows):
        print("(peers.py ran on a different number of rows: compare with care)")
    path = write_json(out_path("fit", args), "fit", args, {"results": results, "peers": peers})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
