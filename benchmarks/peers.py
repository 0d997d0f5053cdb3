"""Peers: whole ``torchrec-ple fit`` vs DeepCTR-Torch, torch-rechub, FuxiCTR and plain PyTorch.

The same rows, sizes and epochs for all, alternated in rounds.

Contenders (each one whole process, in its own venv, timed from outside start to exit):

* ``torchrec-ple``: the real CLI, ``torchrec-ple fit SPEC --out DIR`` on the census-like Parquet
  of ``benchmarks.fit`` (imports, reading and encoding, training, evaluation, checkpoints,
  ``metrics.json``); fused adagrad 0.05 on the tables (on CPU 6% more samples/s than the
  default row-wise Adagrad, same AUC), dense Adam 1e-3; the package's bytecode written first,
  as an installed package has it;
* ``deepctr`` (DeepCTR-Torch 0.3.0), ``rechub`` (torch-rechub 0.9.0), ``fuxi`` (FuxiCTR 2.3.10
  with its model-zoo PLE file) and ``ref`` (the plain-PyTorch PLE yardstick: one table, batched
  experts, fused level-1 matmul): the scripts of the peer harness ``$PEERS_HOME`` (default
  ``../shared/peers`` from the repository root; see its README), called by path, on the same
  rows exported to its ``.npz`` layout (ids 1..V by training frequency, 0 = unseen, and
  ``vocab_sizes`` = V + 1, the table rows its scripts build; standardized numeric columns; the
  validation rows split in two halves ``val_idx`` / ``test_idx``). Adam 1e-3 everywhere.

Same model everywhere: PLE 2 levels, 1 shared + 1 task expert, experts [64, 32], towers [32],
embedding dim 8, batch 1024, the same epochs and threads. Reported per contender (medians over
rounds) and as torchrec-ple / contender (median of the per-round ratios):

* training samples/s: rows x epochs / seconds of the training epochs (torchrec-ple: ``fit``'s
  own ``train.samples_per_second``; peers: the harness's epoch times, validation excluded);
* AUC per task on all validation rows (after the last epoch);
* peak RSS: ``fit``'s ``max_rss_mb_per_rank``; the peers' ``peak_rss_fit_mb`` (through fit
  and predict, before the harness's extra compute-only probe);
* wall: the whole process, start to exit. For the peers also start to the end of their
  evaluation (the same 2-epoch work; the harness then runs a compute-only probe of 130 more
  steps, shown as "whole script"). The Done-when ratio of issue #16 is torchrec-ple's whole
  ``fit`` over the peer's start-to-end-of-evaluation wall.

``OMP_WAIT_POLICY``: a value set in the environment goes to every contender; otherwise
``torchrec-ple fit`` chooses its own and the others run with libgomp's default.

    bash benchmarks/peers_setup.sh     # once: benchmarks/.venv-{deepctr,rechub,fuxi,ref}
    python -m benchmarks.peers [--quick] [--rounds R] [--epochs E] [--threads T]
                               [--peers deepctr,rechub,fuxi,ref] [--peers-home DIR]
"""

import os

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple

# isort: split
import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.common import (
    CENSUS_LABELS,
    REPO_ROOT,
    base_parser,
    census_spec,
    census_valid_rows,
    data_dir,
    fmt,
    markdown_table,
    median,
    out_path,
    write_census,
    write_json,
    write_yaml,
)
from benchmarks.peers_harness import PEERS, SEED, child_env, export_npz, run_ours, run_peer

OURS = "torchrec-ple"
YARDSTICK = "ref"  # not a library: left out of "best peer"

# ------------------------------------------------------------------------------ report


def ratio(ours: List[Dict[str, Any]], theirs: List[Dict[str, Any]], key: str) -> Optional[float]:
    """Median over rounds of ours[key] / theirs[key], both from the same round."""
    pairs = [(a.get(key), b.get(key)) for a, b in zip(ours, theirs)]
    vals = [a / b for a, b in pairs if a is not None and b]
    return median(vals) if vals else None


def times(value: Optional[float]) -> str:
    """A ratio cell: ``1.23x``, ``-`` for none."""
    return "-" if value is None else f"{value:.2f}x"


def stat(runs: List[Dict[str, Any]], key: str, sub: Optional[str] = None) -> Optional[float]:
    """Median over runs of ``run[key]`` (or ``run[key][sub]``), None when no run has it."""
    vals = [r[key][sub] if sub else r[key] for r in runs if r.get(key) is not None]
    return median(vals) if vals else None


# ------------------------------------------------------------------------------ main


@dataclass
class Census:
    """The census rows every contender trains on, in each one's format.

    Args:
        rows (int): training rows.
        valid_rows (int): validation rows.
        train (Path): the training Parquet.
        valid (Path): the validation Parquet.
        npz (Path): the same rows in the harness's ``.npz`` layout.
        meta (Path): the ``.npz``'s meta JSON.
        spec (Dict[str, Any]): torchrec-ple's spec mapping.
        spec_path (Path): that spec as YAML.
    """

    rows: int
    valid_rows: int
    train: Path
    valid: Path
    npz: Path
    meta: Path
    spec: Dict[str, Any]
    spec_path: Path


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common benchmark options plus peers, sizes and timeout."""
    p = base_parser("peers", __doc__.splitlines()[0])
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of: {', '.join(PEERS)}")
    p.add_argument("--peers-home", type=Path, default=None, help="the peer harness folder")
    p.add_argument("--rows", type=int, default=None, help="training rows (200000)")
    p.add_argument("--valid-rows", type=int, default=None, help="validation rows (rows / 4)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every contender (2)")
    p.add_argument("--data-dir", type=Path, default=None, help="where the data files go")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    return p


def harness_home(args: argparse.Namespace) -> Path:
    """The peer harness folder: ``--peers-home``, ``$PEERS_HOME``, else ``../shared/peers``."""
    home = args.peers_home or Path(os.environ.get("PEERS_HOME") or REPO_ROOT / "../shared/peers")
    return home.resolve()


def prepare_census(args: argparse.Namespace, rows: int, valid_rows: int) -> Census:
    """Write (or reuse) the census Parquet, its ``.npz`` export and torchrec-ple's spec."""
    folder = data_dir(args.data_dir)
    train, valid = write_census(folder, rows, valid_rows, seed=SEED)
    npz, meta = export_npz(train, valid)
    spec = census_spec(train, valid, epochs=args.epochs, num_threads=args.threads)
    spec_path = write_yaml(folder / f"peers_{rows}_{valid_rows}_e{args.epochs}_spec.yaml", spec)
    return Census(rows, valid_rows, train, valid, npz, meta, spec, spec_path)


def print_setup(args: argparse.Namespace, data: Census, rounds: int, home: Path) -> None:
    """The data, sizes and wait policy of this run."""
    print(
        f"data: {data.train} ({data.rows:,} rows), {data.valid} ({data.valid_rows:,}); "
        f"same rows as {data.npz}"
    )
    print(
        f"epochs {args.epochs}, batch 1024, {args.threads} threads, {rounds} rounds; harness {home}"
    )
    user_policy = child_env().get("OMP_WAIT_POLICY")
    print(
        f"OMP_WAIT_POLICY={user_policy} for every contender"
        if user_policy
        else "OMP_WAIT_POLICY: torchrec-ple chooses its own; the others run with libgomp's default"
    )


def compile_package() -> None:
    """Write torchrec-ple's bytecode, as ``pip install`` does for the peers' packages: an
    editable checkout run with ``PYTHONDONTWRITEBYTECODE`` (or just edited) would compile
    its ~120 modules in every ``fit`` (0.15-0.2 s), which no installed user pays."""
    import compileall

    compileall.compile_dir(str(Path(torchrec_ple.__file__).parent), quiet=1)


def select_contenders(
    p: argparse.ArgumentParser, args: argparse.Namespace
) -> Tuple[List[str], Dict[str, str]]:
    """torchrec-ple and the wanted peers whose venv exists: (names, skipped peer -> why)."""
    names = [OURS]
    failed: Dict[str, str] = {}
    for peer in args.peers.split(","):
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r} (one of {', '.join(PEERS)})")
        if (REPO_ROOT / PEERS[peer][1] / "bin" / "python").is_file():
            names.append(peer)
        else:
            failed[peer] = (
                f"{PEERS[peer][1]} not found: run `bash benchmarks/peers_setup.sh {peer}`"
            )
            print(f"{peer}: skipped ({failed[peer]})")
    return names, failed


def run_contender(name: str, args: argparse.Namespace, data: Census, home: Path) -> Dict[str, Any]:
    """One whole process of a contender in a private temporary folder."""
    with tempfile.TemporaryDirectory(prefix=f"bench_peers_{name}_") as tmp:
        if name == OURS:
            return run_ours(data.spec_path, args.timeout, Path(tmp))
        return run_peer(name, home, data.npz, data.meta, data.rows, args, Path(tmp))


def run_rounds(
    names: List[str],
    failed: Dict[str, str],
    rounds: int,
    args: argparse.Namespace,
    data: Census,
    home: Path,
) -> Dict[str, List[Dict[str, Any]]]:
    """Every contender once per round, order rotated; a failing one is recorded in
    ``failed`` and left out of the later rounds. The runs of each contender."""
    runs: Dict[str, List[Dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        load = os.getloadavg()[0]
        for name in names[k:] + names[:k]:
            if name in failed:
                continue
            res = run_contender(name, args, data, home)
            if "error" in res:
                failed[name] = res["error"]
                print(f"round {r + 1}: {name} FAILED: {res['error']}")
                continue
            res["round"] = r + 1
            res["load_average_before_round"] = load
            runs[name].append(res)
            aucs = ", ".join(f"{v:.4f}" for v in res["auc"].values())
            print(
                f"round {r + 1}: {name}: {res['samples_per_second']:,.0f} samples/s, AUC {aucs}, "
                f"peak RSS {fmt(res['peak_rss_mb'])} MB, wall {res['wall_to_eval_s']:.1f} s "
                f"(process {res['wall_s']:.1f} s)",
                flush=True,
            )
    return runs


def contender_entry(
    name: str,
    runs: Dict[str, List[Dict[str, Any]]],
    failed: Dict[str, str],
    rows: int,
    epochs: int,
) -> Dict[str, Any]:
    """One contender's medians and, for a peer, the ratios of torchrec-ple to it over the
    rounds that both finished."""
    ours_by_round = {x["round"]: x for x in runs[OURS]}
    mine = runs.get(name, [])
    entry: Dict[str, Any] = {
        "label": OURS + " fit" if name == OURS else PEERS[name][0],
        "samples_per_second": [x["samples_per_second"] for x in mine],
        "median_samples_per_second": stat(mine, "samples_per_second"),
        "auc": {t: stat(mine, "auc", t) for t in CENSUS_LABELS},
        "peak_rss_mb": stat(mine, "peak_rss_mb"),
        "wall_s": stat(mine, "wall_s"),
        "wall_to_eval_s": stat(mine, "wall_to_eval_s"),
        "train_rows": rows,
        "epochs": epochs,
        "error": failed.get(name),
        "runs": mine,
    }
    if name != OURS and mine:
        b = [x for x in mine if x["round"] in ours_by_round]
        a = [ours_by_round[x["round"]] for x in b]
        entry["torchrec_ple_over_peer"] = ratio(a, b, "samples_per_second")
        entry["peak_rss_ours_over_peer"] = ratio(a, b, "peak_rss_mb")
        # ours: the whole fit command; theirs: start to the end of their evaluation
        wall_pairs = [x["wall_s"] / y["wall_to_eval_s"] for x, y in zip(a, b)]
        entry["wall_ours_over_peer"] = median(wall_pairs)
        entry["wall_ours_over_peer_whole_script"] = ratio(a, b, "wall_s")
        entry["auc_ours_minus_peer"] = {
            t: median([x["auc"][t] - y["auc"][t] for x, y in zip(a, b)]) for t in CENSUS_LABELS
        }
    return entry


TABLE_HEADERS = [
    "contender",
    "train samples/s",
    "torchrec-ple / it",
    "AUC label_a",
    "AUC label_b",
    "peak RSS MB",
    "RSS ours / it",
    "wall s (to eval)",
    "wall ours / it",
    "wall s (process)",
    "status",
]


def table_row(entry: Dict[str, Any], ok: bool, error: Optional[str]) -> List[str]:
    """The table row of one contender's entry."""
    return [
        entry["label"],
        fmt(entry["median_samples_per_second"]),
        times(entry.get("torchrec_ple_over_peer")),
        fmt(entry["auc"]["label_a"], 4),
        fmt(entry["auc"]["label_b"], 4),
        fmt(entry["peak_rss_mb"]),
        times(entry.get("peak_rss_ours_over_peer")),
        fmt(entry["wall_to_eval_s"], 1),
        times(entry.get("wall_ours_over_peer")),
        fmt(entry["wall_s"], 1),
        "ok" if ok else "FAILED: " + (error or "")[:80].replace("\n", " "),
    ]


def report_notes(
    results: Dict[str, Any],
    names: List[str],
    ours: List[Dict[str, Any]],
    rounds: int,
    args: argparse.Namespace,
    rows: int,
    elapsed: float,
) -> List[str]:
    """The lines under the table: the run's conditions and the issue #16 targets."""
    notes = [
        f"{len(ours)} round(s) of {rounds}, {rows:,} training rows, {args.epochs} epoch(s), "
        f"batch 1024, {args.threads} threads; load average before the rounds: "
        + ", ".join(f"{x['load_average_before_round']:.1f}" for x in ours)
        + f" ({os.cpu_count()} CPUs); benchmark took {elapsed:.0f} s.",
        "Ratios are torchrec-ple / contender, medians of per-round ratios. wall: torchrec-ple's "
        "whole `fit` command vs the peer's script from start to the end of its evaluation "
        "(process: to exit, including the harness's compute-only probe).",
    ]
    peers_ok = [
        n for n in names[1:] if n != YARDSTICK and results[n].get("median_samples_per_second")
    ]
    if peers_ok:
        best = max(peers_ok, key=lambda n: results[n]["median_samples_per_second"])
        fastest_wall = min(peers_ok, key=lambda n: results[n]["wall_to_eval_s"])
        b = results[best]
        notes.append(
            f"Best peer by samples/s: {b['label']}: torchrec-ple / it "
            f"{fmt(b['torchrec_ple_over_peer'], 2)}x (issue #16 target >= 2.0x); peak RSS ours / "
            f"it {fmt(b['peak_rss_ours_over_peer'], 2)}x (target <= 1.0x). Fastest peer script: "
            f"{results[fastest_wall]['label']}: wall ours / it "
            f"{fmt(results[fastest_wall]['wall_ours_over_peer'], 2)}x (target <= 0.6x)."
        )
    if results.get(YARDSTICK, {}).get("torchrec_ple_over_peer"):
        notes.append(
            f"Yardstick (plain PyTorch): torchrec-ple / it "
            f"{fmt(results[YARDSTICK]['torchrec_ple_over_peer'], 2)}x (target >= 0.9x)."
        )
    return notes


def write_outputs(
    args: argparse.Namespace, argv: Optional[List[str]], payload: Dict[str, Any]
) -> Tuple[Path, Path]:
    """The JSON result and a markdown file of the table and notes beside it."""
    path = write_json(out_path("peers", args), "peers", args, payload)
    md_path = path.with_suffix(".md")
    md_path.write_text(
        f"# `python -m benchmarks.peers {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        + payload["table_markdown"]
        + "\n\n"
        + "\n\n".join(payload["notes"])
        + "\n"
    )
    return path, md_path


def main(argv: Optional[List[str]] = None) -> int:
    """Run every contender in alternating rounds; print the table and write JSON + markdown."""
    p = build_parser()
    args = p.parse_args(argv)
    home = harness_home(args)
    if not (home / "common.py").is_file():
        print(f"peer harness not found at {home}: set PEERS_HOME or --peers-home", file=sys.stderr)
        return 2
    args.threads = args.threads or 2
    args.epochs = args.epochs or (1 if args.quick else 2)
    rows = args.rows or (4000 if args.quick else 200_000)
    valid_rows = census_valid_rows(rows, args.valid_rows)
    rounds = args.rounds or (1 if args.quick else 3)
    data = prepare_census(args, rows, valid_rows)
    print_setup(args, data, rounds, home)

    names, failed = select_contenders(p, args)
    compile_package()
    t_start = time.perf_counter()
    runs = run_rounds(names, failed, rounds, args, data, home)
    if failed.get(OURS) or not runs.get(OURS):
        print(f"{OURS} failed: no ratios")
        return 1
    # Rounds where a contender failed leave it out; ratios pair rounds that both finished.
    results: Dict[str, Any] = {}
    table = []
    for name in names + [n for n in failed if n not in names]:
        results[name] = contender_entry(name, runs, failed, rows, args.epochs)
        table.append(table_row(results[name], bool(runs.get(name)), failed.get(name)))
    md = markdown_table(TABLE_HEADERS, table)
    elapsed = time.perf_counter() - t_start
    notes = report_notes(results, names, runs[OURS], rounds, args, rows, elapsed)
    print()
    print(md)
    print()
    print("\n".join(notes))
    payload = {
        "census_rows": rows,
        "valid_rows": valid_rows,
        "rounds": rounds,
        "peers_home": home,
        "npz": data.npz,
        "spec": data.spec,
        "results": results,
        "table_markdown": md,
        "notes": notes,
    }
    path, md_path = write_outputs(args, argv, payload)
    print(f"wrote {path} and {md_path}")
    return 0 if any(runs.get(n) for n in names[1:]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
