"""The peer harness side of ``benchmarks.peers``: the peers' venvs and scripts, the census rows
in the harness's ``.npz`` layout, and one whole process of a contender (torchrec-ple's real
``fit`` CLI, or a harness script in its peer's venv), timed from outside start to exit.
"""

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from benchmarks.common import CENSUS_CATEGORICAL, CENSUS_LABELS, CENSUS_NUMERIC, REPO_ROOT
from torchrec_ple.threads import CHOSEN

# key: (label, venv, harness script, its arguments before the seed)
PEERS: Dict[str, Tuple[str, str, str, List[str]]] = {
    "deepctr": ("deepctr-torch 0.3.0", "benchmarks/.venv-deepctr", "bench_deepctr.py", ["PLE"]),
    "rechub": ("torch-rechub 0.9.0", "benchmarks/.venv-rechub", "bench_rechub.py", ["PLE"]),
    "fuxi": ("fuxictr 2.3.10", "benchmarks/.venv-fuxi", "bench_fuxi.py", ["PLE"]),
    "ref": ("plain-pytorch PLE", "benchmarks/.venv-ref", "bench_ref.py", ["batched2_fused"]),
}
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
