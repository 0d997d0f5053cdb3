"""Peers: whole ``torchrec-ple fit`` vs DeepCTR-Torch, torch-rechub, FuxiCTR and plain PyTorch.

The same rows, sizes and epochs for all, alternated in rounds.

Contenders (each one whole process, in its own venv, timed from outside start to exit):

* ``torchrec-ple``: the real CLI, ``torchrec-ple fit SPEC --out DIR`` on the census-like Parquet
  of ``benchmarks.fit`` (imports, reading and encoding, training, evaluation, checkpoints,
  ``metrics.json``); fused adagrad 0.05 on the tables, dense Adam 1e-3;
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
import torchrec_ple  # noqa: F401

# isort: split
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from benchmarks.common import (
    CENSUS_CATEGORICAL,
    CENSUS_LABELS,
    CENSUS_NUMERIC,
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
from torchrec_ple.threads import CHOSEN

OURS = "torchrec-ple"
# key: (label, venv, harness script, its arguments before the seed)
PEERS: Dict[str, Tuple[str, str, str, List[str]]] = {
    "deepctr": ("deepctr-torch 0.3.0", "benchmarks/.venv-deepctr", "bench_deepctr.py", ["PLE"]),
    "rechub": ("torch-rechub 0.9.0", "benchmarks/.venv-rechub", "bench_rechub.py", ["PLE"]),
    "fuxi": ("fuxictr 2.3.10", "benchmarks/.venv-fuxi", "bench_fuxi.py", ["PLE"]),
    "ref": ("plain-pytorch PLE", "benchmarks/.venv-ref", "bench_ref.py", ["batched2_fused"]),
}
YARDSTICK = "ref"  # not a library: left out of "best peer"
HARNESS_LABELS = ("income", "marital")  # the harness's names of label_a, label_b
SEED = 0

# Runs a harness script by path in a peer's venv, unchanged; it only notes the time when the
# script first asks for its peak RSS (right after its test-set evaluation, before its
# compute-only probe) and adds it to the result JSON.
WRAPPER = """
import runpy, sys, time
home, script = sys.argv[1], sys.argv[2]
sys.path.insert(0, home)
import common as C
mark, peak, save = {}, C.peak_rss_mb, C.save
def peak_rss_mb():
    mark.setdefault("eval_done_unix", time.time())
    return peak()
def save_with_mark(result, tag):
    result.update(mark)
    return save(result, tag)
C.peak_rss_mb, C.save = peak_rss_mb, save_with_mark
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""

# ------------------------------------------------------------------------------ data


def export_npz(train: Path, valid: Path, seed: int = SEED) -> Tuple[Path, Path]:
    """The census-like Parquet pair in the harness's ``.npz`` layout, plus its meta JSON
    (written next to the Parquet files once, then reused)."""
    npz = train.with_name(train.name.replace("_train.parquet", "_mtl_v1.npz"))
    meta = npz.with_name(npz.stem + "_meta.json")
    if npz.is_file() and meta.is_file():
        return npz, meta
    import pyarrow.parquet as pq

    tr = pq.read_table(train).to_pandas()
    va = pq.read_table(valid).to_pandas()
    sparse_tr, sparse_va, vocab = [], [], []
    for c in CENSUS_CATEGORICAL:
        values = tr[c].value_counts(sort=True).index  # ids 1..V by training frequency
        mapping = {v: i + 1 for i, v in enumerate(values)}
        vocab.append(len(values) + 1)  # table rows: the harness's scripts index 0..V
        sparse_tr.append(tr[c].map(mapping).fillna(0).to_numpy(np.int64))
        sparse_va.append(va[c].map(mapping).fillna(0).to_numpy(np.int64))
    dense_tr, dense_va = [], []
    for n in CENSUS_NUMERIC:
        mean, std = float(tr[n].mean()), float(tr[n].std()) or 1.0
        dense_tr.append(((tr[n] - mean) / std).to_numpy(np.float32))
        dense_va.append(((va[n] - mean) / std).to_numpy(np.float32))
    perm = np.random.default_rng(seed).permutation(len(va)).astype(np.int64)
    half = len(va) // 2
    arrays = {
        "sparse_train": np.stack(sparse_tr, 1),
        "dense_train": np.stack(dense_tr, 1),
        "y_train": tr[CENSUS_LABELS].to_numpy(np.float32),
        "sparse_test": np.stack(sparse_va, 1),
        "dense_test": np.stack(dense_va, 1),
        "y_test": va[CENSUS_LABELS].to_numpy(np.float32),
        "val_idx": np.sort(perm[:half]),
        "test_idx": np.sort(perm[half:]),
        "vocab_sizes": np.asarray(vocab, np.int64),
    }
    info = {
        "source": [str(train), str(valid)],
        "sparse": CENSUS_CATEGORICAL,
        "dense": CENSUS_NUMERIC,
        "labels": dict(zip(HARNESS_LABELS, CENSUS_LABELS)),
        "train_rows": len(tr),
        "test_rows": len(va),
    }
    tmp = npz.with_name(f".{npz.stem}.{os.getpid()}.npz")  # atomic: runs may share the folder
    np.savez(tmp, **arrays)
    tmp.replace(npz)
    tmp_meta = meta.with_name(f".{meta.name}.{os.getpid()}")
    tmp_meta.write_text(json.dumps(info, indent=1))
    tmp_meta.replace(meta)
    return npz, meta


# ------------------------------------------------------------------------------ runs


def child_env() -> Dict[str, str]:
    """This environment without the wait policy that ``import torchrec_ple`` chose here: a
    user's own ``OMP_WAIT_POLICY`` reaches every contender, a chosen one none of them."""
    env = dict(os.environ)
    if env.get(CHOSEN) is not None and env.get(CHOSEN) == env.get("OMP_WAIT_POLICY"):
        env.pop("OMP_WAIT_POLICY")
    env.pop(CHOSEN, None)
    return env


def run_process(
    cmd: List[str], env: Dict[str, str], log: Path, timeout: float
) -> Tuple[Optional[int], float, float, float]:
    """Run ``cmd`` to its end: (exit code or None on timeout, start unix time, wall seconds,
    peak RSS MB of the process from ``wait4``)."""
    with open(log, "w") as out:
        t_unix, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    code = None if proc.returncode == -9 and wall >= timeout else proc.returncode
    return code, t_unix, wall, usage.ru_maxrss / 1024.0  # ru_maxrss: KiB on Linux


def fit_command() -> List[str]:
    """The real CLI of this venv (``torchrec-ple``), else ``python -m torchrec_ple``."""
    script = Path(sys.executable).with_name("torchrec-ple")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torchrec_ple"]


def run_ours(spec: Path, timeout: float, tmp: Path) -> Dict[str, Any]:
    """One whole ``torchrec-ple fit``; its numbers or ``error``."""
    run_dir = tmp / "run"
    cmd = fit_command() + ["fit", str(spec), "--out", str(run_dir)]
    code, _, wall, rss = run_process(cmd, child_env(), tmp / "log.txt", timeout)
    log = (tmp / "log.txt").read_text(errors="replace")
    metrics_file = run_dir / "metrics.json"
    if code != 0 or not metrics_file.is_file():
        return {"error": f"exit code {code}: {log[-2500:]}"}
    m = json.loads(metrics_file.read_text())
    policy = re.search(r"OMP_WAIT_POLICY=(\w+)", log)
    return {
        "samples_per_second": m["train"]["samples_per_second"],
        "auc": {t: m["tasks"][t]["auc"] for t in CENSUS_LABELS},
        "peak_rss_mb": max(m["train"]["max_rss_mb_per_rank"]),
        "process_max_rss_mb": rss,
        "wall_s": wall,
        "wall_to_eval_s": wall,  # the whole command is the 2-epoch work
        "train_seconds": m["train"]["seconds"],
        "data_seconds": m["train"].get("data_seconds"),
        "OMP_WAIT_POLICY": policy.group(1) if policy else None,
    }


def run_peer(
    peer: str, home: Path, npz: Path, meta: Path, rows: int, args: Any, tmp: Path
) -> Dict[str, Any]:
    """One whole harness script of a peer in its venv; its numbers or ``error``."""
    _, venv, script, script_args = PEERS[peer]
    results = tmp / "results"
    env = child_env()
    env.update(
        PEERS_HOME=str(tmp / "work"),  # the harness's scratch (FuxiCTR's npz copies): private
        PEERS_DATA=str(npz),
        PEERS_META=str(meta),
        RESULTS=str(results),
        EPOCHS=str(args.epochs),
        THREADS=str(args.threads),
    )
    env.pop("SMOKE", None)
    python = REPO_ROOT / venv / "bin" / "python"
    cmd = [str(python), "-c", WRAPPER, str(home), str(home / script)] + script_args + [str(SEED)]
    code, t_unix, wall, rss = run_process(cmd, env, tmp / "log.txt", args.timeout)
    found = sorted(results.glob("*.json")) if results.is_dir() else []
    if code != 0 or not found:
        log = (tmp / "log.txt").read_text(errors="replace")
        return {"error": f"exit code {code}: {log[-2500:]}"}
    r = json.loads(found[0].read_text())
    epochs = r["epoch_times_fit_s"]
    return {
        "samples_per_second": rows * len(epochs) / sum(epochs),
        "samples_per_second_later_epochs": r.get("sps_fit"),
        "samples_per_second_compute_probe": r.get("sps_compute"),
        "auc": {t: r[f"auc_{h}_test_full"] for t, h in zip(CENSUS_LABELS, HARNESS_LABELS)},
        "peak_rss_mb": r.get("peak_rss_fit_mb"),
        "process_max_rss_mb": rss,
        "wall_s": wall,
        "wall_to_eval_s": r["eval_done_unix"] - t_unix if "eval_done_unix" in r else wall,
        "train_seconds": sum(epochs),
        "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY"),
        "harness": r,
    }


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
    vals = [r[key][sub] if sub else r[key] for r in runs if r.get(key) is not None]
    return median(vals) if vals else None


def main(argv: Optional[List[str]] = None) -> int:
    p = base_parser("peers", __doc__.splitlines()[0])
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of: {', '.join(PEERS)}")
    p.add_argument("--peers-home", type=Path, default=None, help="the peer harness folder")
    p.add_argument("--rows", type=int, default=None, help="training rows (200000)")
    p.add_argument("--valid-rows", type=int, default=None, help="validation rows (rows / 4)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every contender (2)")
    p.add_argument("--data-dir", type=Path, default=None, help="where the data files go")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    args = p.parse_args(argv)

    home = args.peers_home or Path(os.environ.get("PEERS_HOME") or REPO_ROOT / "../shared/peers")
    home = home.resolve()
    if not (home / "common.py").is_file():
        print(f"peer harness not found at {home}: set PEERS_HOME or --peers-home", file=sys.stderr)
        return 2
    args.threads = args.threads or 2
    args.epochs = args.epochs or (1 if args.quick else 2)
    rows = args.rows or (4000 if args.quick else 200_000)
    valid_rows = census_valid_rows(rows, args.valid_rows)
    rounds = args.rounds or (1 if args.quick else 3)
    folder = data_dir(args.data_dir)
    train, valid = write_census(folder, rows, valid_rows, seed=SEED)
    npz, meta = export_npz(train, valid)
    spec = census_spec(train, valid, epochs=args.epochs, num_threads=args.threads)
    spec_path = write_yaml(folder / f"peers_{rows}_{valid_rows}_e{args.epochs}_spec.yaml", spec)
    print(f"data: {train} ({rows:,} rows), {valid} ({valid_rows:,}); same rows as {npz}")
    print(
        f"epochs {args.epochs}, batch 1024, {args.threads} threads, {rounds} rounds; harness {home}"
    )
    user_policy = child_env().get("OMP_WAIT_POLICY")
    print(
        f"OMP_WAIT_POLICY={user_policy} for every contender"
        if user_policy
        else "OMP_WAIT_POLICY: torchrec-ple chooses its own; the others run with libgomp's default"
    )

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

    runs: Dict[str, List[Dict[str, Any]]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(rounds):
        k = r % len(names)
        load = os.getloadavg()[0]
        for name in names[k:] + names[:k]:
            if name in failed:
                continue
            with tempfile.TemporaryDirectory(prefix=f"bench_peers_{name}_") as tmp:
                if name == OURS:
                    res = run_ours(spec_path, args.timeout, Path(tmp))
                else:
                    res = run_peer(name, home, npz, meta, rows, args, Path(tmp))
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
    if failed.get(OURS) or not runs.get(OURS):
        print(f"{OURS} failed: no ratios")
        return 1
    # Rounds where a contender failed leave it out; ratios pair rounds that both finished.
    ours_by_round = {x["round"]: x for x in runs[OURS]}

    def paired(name: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        both = [x for x in runs.get(name, []) if x["round"] in ours_by_round]
        return [ours_by_round[x["round"]] for x in both], both

    results: Dict[str, Any] = {}
    table = []
    for name in names + [n for n in failed if n not in names]:
        label = OURS + " fit" if name == OURS else PEERS[name][0]
        ok = bool(runs.get(name))
        a, b = paired(name) if ok else ([], [])
        entry: Dict[str, Any] = {
            "label": label,
            "samples_per_second": [x["samples_per_second"] for x in runs.get(name, [])],
            "median_samples_per_second": stat(runs.get(name, []), "samples_per_second"),
            "auc": {t: stat(runs.get(name, []), "auc", t) for t in CENSUS_LABELS},
            "peak_rss_mb": stat(runs.get(name, []), "peak_rss_mb"),
            "wall_s": stat(runs.get(name, []), "wall_s"),
            "wall_to_eval_s": stat(runs.get(name, []), "wall_to_eval_s"),
            "train_rows": rows,
            "epochs": args.epochs,
            "error": failed.get(name),
            "runs": runs.get(name, []),
        }
        if name != OURS and ok:
            entry["torchrec_ple_over_peer"] = ratio(a, b, "samples_per_second")
            entry["peak_rss_ours_over_peer"] = ratio(a, b, "peak_rss_mb")
            # ours: the whole fit command; theirs: start to the end of their evaluation
            wall_pairs = [x["wall_s"] / y["wall_to_eval_s"] for x, y in zip(a, b)]
            entry["wall_ours_over_peer"] = median(wall_pairs)
            entry["wall_ours_over_peer_whole_script"] = ratio(a, b, "wall_s")
            entry["auc_ours_minus_peer"] = {
                t: median([x["auc"][t] - y["auc"][t] for x, y in zip(a, b)]) for t in CENSUS_LABELS
            }
        results[name] = entry
        table.append(
            [
                label,
                fmt(entry["median_samples_per_second"]),
                times(entry.get("torchrec_ple_over_peer")),
                fmt(entry["auc"]["label_a"], 4),
                fmt(entry["auc"]["label_b"], 4),
                fmt(entry["peak_rss_mb"]),
                times(entry.get("peak_rss_ours_over_peer")),
                fmt(entry["wall_to_eval_s"], 1),
                times(entry.get("wall_ours_over_peer")),
                fmt(entry["wall_s"], 1),
                "ok" if ok else "FAILED: " + (failed.get(name) or "")[:80].replace("\n", " "),
            ]
        )
    headers = [
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
    md = markdown_table(headers, table)
    elapsed = time.perf_counter() - t_start
    done = len(runs[OURS])
    notes = [
        f"{done} round(s) of {rounds}, {rows:,} training rows, {args.epochs} epoch(s), batch 1024, "
        f"{args.threads} threads; load average before the rounds: "
        + ", ".join(f"{x['load_average_before_round']:.1f}" for x in runs[OURS])
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
            f"Best peer by samples/s: {b['label']}: torchrec-ple / it {fmt(b['torchrec_ple_over_peer'], 2)}x "
            f"(issue #16 target >= 2.0x); peak RSS ours / it {fmt(b['peak_rss_ours_over_peer'], 2)}x "
            f"(target <= 1.0x). Fastest peer script: {results[fastest_wall]['label']}: wall ours / it "
            f"{fmt(results[fastest_wall]['wall_ours_over_peer'], 2)}x (target <= 0.6x)."
        )
    if results.get(YARDSTICK, {}).get("torchrec_ple_over_peer"):
        notes.append(
            f"Yardstick (plain PyTorch): torchrec-ple / it "
            f"{fmt(results[YARDSTICK]['torchrec_ple_over_peer'], 2)}x (target >= 0.9x)."
        )
    print()
    print(md)
    print()
    print("\n".join(notes))
    payload = {
        "census_rows": rows,
        "valid_rows": valid_rows,
        "rounds": rounds,
        "peers_home": home,
        "npz": npz,
        "spec": spec,
        "results": results,
        "table_markdown": md,
        "notes": notes,
    }
    path = write_json(out_path("peers", args), "peers", args, payload)
    md_path = path.with_suffix(".md")
    md_path.write_text(
        f"# `python -m benchmarks.peers {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        + md
        + "\n\n"
        + "\n\n".join(notes)
        + "\n"
    )
    print(f"wrote {path} and {md_path}")
    return 0 if any(runs.get(n) for n in names[1:]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
