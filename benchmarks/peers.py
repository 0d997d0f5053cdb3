"""Peers: DeepCTR-Torch and torch-rechub PLE against torchrec-ple on the same data and sizes.

Setup (not part of CI): ``bash benchmarks/peers_setup.sh`` makes ``benchmarks/.venv-deepctr``
and ``benchmarks/.venv-rechub`` (git-ignored) with the project's torch (2.13.0, the local CPU wheel) plus
``deepctr-torch==0.3.0`` / ``torch-rechub==0.9.0``.

Every contender trains on the census-like Parquet of ``benchmarks.fit`` (same rows, seed and
files), PLE with 2 levels, 1 shared + 1 task expert, experts [64, 32], single-linear gates,
towers [32], embedding dim 8, batch 1024, Adam 1e-3, the same epochs, and reports training
samples/s of its own fit loop and validation AUC per task. Contenders run as subprocesses
(each in its venv), alternated in rounds; the ratios are medians of per-round ratios.

* ``torchrec-ple``: ``python -m benchmarks.fit --datasets census`` (fused adagrad 0.05 on the
  tables, dense Adam 1e-3);
* ``deepctr-torch``: ``deepctr_torch.models.PLE`` + ``model.compile("adam", ...)`` +
  ``model.fit(x, y, batch_size=1024)`` (timed: the whole ``fit`` call, no validation inside);
* ``torch-rechub``: ``torch_rechub.models.multi_task.PLE`` + ``MTLTrainer.fit`` (timed: its
  ``train_one_epoch`` calls; the per-epoch validation and model save are not counted).

Categorical values are mapped to ids 1..V by training-set frequency (0: unseen) and numeric
columns standardized, outside the timed part, for the peers (the peers take encoded arrays).

    python -m benchmarks.peers [--quick] [--rounds R] [--epochs E] [--peers deepctr,rechub]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp loads: before torch

# ruff: noqa: E402
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from benchmarks.common import (
    CENSUS_CATEGORICAL,
    CENSUS_LABELS,
    CENSUS_NUMERIC,
    REPO_ROOT,
    base_parser,
    census_valid_rows,
    data_dir,
    fmt,
    markdown_table,
    median,
    out_path,
    paired_ratio,
    write_census,
    write_json,
)

PEERS = {
    "deepctr": ("deepctr-torch", "benchmarks/.venv-deepctr"),
    "rechub": ("torch-rechub", "benchmarks/.venv-rechub"),
}
OURS = "torchrec-ple"
BATCH = 1024
EXPERT_DIMS = [64, 32]
TOWER_DIMS = [32]
EMB_DIM = 8

# ------------------------------------------------------------------------------ worker side


def encode(train_path: Path, valid_path: Path) -> Tuple[Dict[str, Any], ...]:
    """Ids 1..V by training frequency (0: unseen) and standardized numeric columns."""
    import pyarrow.parquet as pq

    train = pq.read_table(train_path).to_pandas()
    valid = pq.read_table(valid_path).to_pandas()
    xt: Dict[str, np.ndarray] = {}
    xv: Dict[str, np.ndarray] = {}
    vocab: Dict[str, int] = {}
    for c in CENSUS_CATEGORICAL:
        values = train[c].value_counts().index
        mapping = {v: i + 1 for i, v in enumerate(values)}
        vocab[c] = len(values) + 1
        xt[c] = train[c].map(mapping).fillna(0).to_numpy(np.int64)
        xv[c] = valid[c].map(mapping).fillna(0).to_numpy(np.int64)
    for n in CENSUS_NUMERIC:
        mean, std = float(train[n].mean()), float(train[n].std()) or 1.0
        xt[n] = ((train[n] - mean) / std).to_numpy(np.float32)
        xv[n] = ((valid[n] - mean) / std).to_numpy(np.float32)
    yt = train[CENSUS_LABELS].to_numpy(np.float32)
    yv = valid[CENSUS_LABELS].to_numpy(np.float32)
    return xt, yt, xv, yv, vocab  # type: ignore[return-value]


def _aucs(y: np.ndarray, p: np.ndarray) -> Dict[str, float]:
    from sklearn.metrics import roc_auc_score

    return {n: float(roc_auc_score(y[:, k], p[:, k])) for k, n in enumerate(CENSUS_LABELS)}


def run_deepctr(args: Any) -> Dict[str, Any]:
    """DeepCTR-Torch's PLE through its own ``fit``."""
    # deepctr_torch asks PyPI for a newer release in a thread at import: no network call.
    stub = types.ModuleType("requests")
    stub.codes = types.SimpleNamespace(ok=200)  # type: ignore[attr-defined]
    stub.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="")  # type: ignore[attr-defined]
    sys.modules["requests"] = stub
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import PLE

    xt, yt, xv, yv, vocab = encode(args.train, args.valid)
    columns = [SparseFeat(c, vocabulary_size=vocab[c], embedding_dim=EMB_DIM) for c in vocab]
    columns += [DenseFeat(n, 1) for n in CENSUS_NUMERIC]
    torch.manual_seed(0)
    model = PLE(
        columns,
        shared_expert_num=1,
        specific_expert_num=1,
        num_levels=2,
        expert_dnn_hidden_units=tuple(EXPERT_DIMS),
        gate_dnn_hidden_units=(),  # single-linear gates, as in the paper and torchrec-ple
        tower_dnn_hidden_units=tuple(TOWER_DIMS),
        l2_reg_embedding=0.0,
        l2_reg_linear=0.0,
        task_types=("binary", "binary"),
        task_names=tuple(CENSUS_LABELS),
        device="cpu",
        seed=0,
    )
    model.compile("adam", loss=["binary_crossentropy"] * 2, metrics=[])  # Adam, lr 1e-3
    t0 = time.perf_counter()
    model.fit(xt, yt, batch_size=BATCH, epochs=args.epochs, verbose=0, shuffle=True)
    seconds = time.perf_counter() - t0
    pred = model.predict(xv, batch_size=4 * BATCH)
    return {"train_seconds": seconds, "auc": _aucs(yv, np.asarray(pred))}


def run_rechub(args: Any) -> Dict[str, Any]:
    """torch-rechub's PLE through ``MTLTrainer.fit`` (training epochs timed)."""
    import torch
    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import PLE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    xt, yt, xv, yv, vocab = encode(args.train, args.valid)
    features: List[Any] = [SparseFeature(c, vocab_size=vocab[c], embed_dim=EMB_DIM) for c in vocab]
    features += [DenseFeature(n, embed_dim=1) for n in CENSUS_NUMERIC]
    torch.manual_seed(0)
    model = PLE(
        features,
        task_types=["classification", "classification"],
        n_level=2,
        n_expert_specific=1,
        n_expert_shared=1,
        expert_params={"dims": EXPERT_DIMS},
        tower_params_list=[{"dims": TOWER_DIMS}, {"dims": TOWER_DIMS}],
    )
    train_dl, val_dl, _ = DataGenerator(xt, yt).generate_dataloader(
        x_val=xv, y_val=yv, x_test=xv, y_test=yv, batch_size=BATCH
    )
    with tempfile.TemporaryDirectory(prefix="bench_rechub_") as tmp:
        trainer = MTLTrainer(
            model,
            task_types=["classification", "classification"],
            optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
            n_epoch=args.epochs,
            earlystop_patience=args.epochs + 1,
            device="cpu",
            model_path=tmp,
        )
        timed: List[float] = []
        train_one_epoch = trainer.train_one_epoch

        def timed_epoch(loader: Any) -> Any:
            t0 = time.perf_counter()
            out = train_one_epoch(loader)
            timed.append(time.perf_counter() - t0)
            return out

        trainer.train_one_epoch = timed_epoch  # type: ignore[method-assign]
        trainer.fit(train_dl, val_dl)
        inputs = DataLoader(_Inputs(xv), batch_size=4 * BATCH, shuffle=False)
        pred = np.asarray(trainer.predict(trainer.model, inputs))
    return {"train_seconds": sum(timed), "auc": _aucs(yv, pred)}


class _Inputs:
    """A map-style dataset of input dicts (rechub's ``predict`` takes batches of ``x``)."""

    def __init__(self, x: Dict[str, np.ndarray]) -> None:
        self.x = x
        self.n = len(next(iter(x.values())))

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {k: v[i] for k, v in self.x.items()}

    def __len__(self) -> int:
        return self.n


def worker(args: Any) -> int:
    """Run one peer in this (its own) venv and write its result JSON."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import pyarrow.parquet as pq

    rows = pq.read_metadata(args.train).num_rows
    result = {"deepctr": run_deepctr, "rechub": run_rechub}[args.worker](args)
    result.update(
        train_rows=rows,
        epochs=args.epochs,
        samples_per_second=rows * args.epochs / result["train_seconds"],
        torch=torch.__version__,
        torch_num_threads=torch.get_num_threads(),
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY"),
    )
    Path(args.result).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------ orchestrator


def _python(peer: str) -> Path:
    return REPO_ROOT / PEERS[peer][1] / "bin" / "python"


def run_contender(name: str, args: Any, train: Path, valid: Path, rows: int) -> Dict[str, Any]:
    """One training run of a contender in a subprocess: its result dict, or ``error``."""
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        result = Path(tmp) / "result.json"
        threads = ["--threads", str(args.threads)] if args.threads else []
        if name == OURS:
            cmd = [sys.executable, "-m", "benchmarks.fit", "--datasets", "census", "--rounds", "1"]
            cmd += ["--rows", str(rows), "--valid-rows", str(args.valid_rows_n)]
            cmd += ["--epochs", str(args.epochs), "--data-dir", str(args.data_dir_resolved)]
            cmd += ["--out", str(result), "--peers", str(Path(tmp) / "none.json")] + threads
        else:
            peer = next(k for k, v in PEERS.items() if v[0] == name)
            cmd = [str(_python(peer)), "-m", "benchmarks.peers", "--worker", peer]
            cmd += ["--train", str(train), "--valid", str(valid), "--epochs", str(args.epochs)]
            cmd += ["--result", str(result)] + threads
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        try:
            r = subprocess.run(
                cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.timeout}s"}
        if r.returncode != 0 or not result.is_file():
            return {"error": f"exit code {r.returncode}: {(r.stdout + r.stderr)[-2500:]}"}
        data = json.loads(result.read_text())
    if name == OURS:
        c = data["results"]["census"]
        return {
            "samples_per_second": c["median_samples_per_second"],
            "auc": {t: m["auc"] for t, m in c["tasks"].items()},
            "train_rows": c["train_rows"],
            "epochs": args.epochs,
        }
    return data


def main(argv: Optional[List[str]] = None) -> int:
    p = base_parser("peers", __doc__.splitlines()[0])
    p.add_argument("--peers", default="deepctr,rechub", help="comma list of: deepctr, rechub")
    p.add_argument("--rows", type=int, default=None, help="training rows (200000)")
    p.add_argument("--valid-rows", type=int, default=None, help="validation rows (rows / 4)")
    p.add_argument("--epochs", type=int, default=1, help="epochs for every contender")
    p.add_argument("--data-dir", type=Path, default=None, help="where the Parquet files go")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per training run")
    # worker mode (inside a peer's venv)
    p.add_argument("--worker", choices=list(PEERS), help=argparse_hidden())
    p.add_argument("--train", type=Path, help=argparse_hidden())
    p.add_argument("--valid", type=Path, help=argparse_hidden())
    p.add_argument("--result", type=Path, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)

    rows = args.rows or (4000 if args.quick else 200_000)
    args.valid_rows_n = census_valid_rows(rows, args.valid_rows)
    rounds = args.rounds or (1 if args.quick else 3)
    args.data_dir_resolved = data_dir(args.data_dir)
    train, valid = write_census(args.data_dir_resolved, rows, args.valid_rows_n, seed=0)
    print(f"data: {train} ({rows:,} rows), {valid}; epochs {args.epochs}, batch {BATCH}")

    names = [OURS]
    missing: Dict[str, str] = {}
    for peer in args.peers.split(","):
        label, venv = PEERS[peer]
        if _python(peer).is_file():
            names.append(label)
        else:
            missing[label] = f"{venv} not found: run `bash benchmarks/peers_setup.sh {peer}`"
            print(f"{label}: skipped ({missing[label]})")

    runs: Dict[str, List[Dict[str, Any]]] = {n: [] for n in names}
    failed: Dict[str, str] = dict(missing)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if name in failed:
                continue
            res = run_contender(name, args, train, valid, rows)
            if "error" in res:
                failed[name] = res["error"]
                print(f"round {r + 1}: {name} FAILED: {res['error']}")
                continue
            runs[name].append(res)
            aucs = ", ".join(f"{v:.4f}" for v in res["auc"].values())
            print(f"round {r + 1}: {name} {res['samples_per_second']:,.0f} samples/s, AUC {aucs}")

    rates = {n: [x["samples_per_second"] for x in v] for n, v in runs.items()}
    results: Dict[str, Any] = {}
    table = []
    for name in names + [m for m in missing]:
        ok = bool(rates.get(name))
        ratio = paired_ratio(rates[OURS], rates[name]) if ok and rates.get(OURS) else None
        last = runs[name][-1] if ok else {}
        results[name] = {
            "samples_per_second": rates.get(name, []),
            "median_samples_per_second": median(rates[name]) if ok else None,
            "auc": last.get("auc", {}),
            "train_rows": rows,
            "epochs": args.epochs,
            "torchrec_ple_over_peer": ratio,
            "error": failed.get(name),
        }
        aucs = [last.get("auc", {}).get(t) for t in CENSUS_LABELS]
        table.append(
            [
                name,
                fmt(results[name]["median_samples_per_second"]),
                fmt(ratio, 2) + "x" if ratio else "-",
                fmt(aucs[0], 4),
                fmt(aucs[1], 4),
                "ok" if ok else "FAILED: " + (failed.get(name) or "")[:80].replace("\n", " "),
            ]
        )
    headers = ["contender", "samples/s", "torchrec-ple / it", "AUC label_a", "AUC label_b"]
    print()
    print(markdown_table(headers + ["status"], table))
    payload = {"census_rows": rows, "valid_rows": args.valid_rows_n, "results": results}
    path = write_json(out_path("peers", args), "peers", args, payload)
    print(f"wrote {path}")
    return 0 if rates.get(OURS) and any(rates.get(n) for n in names[1:]) else 1


def argparse_hidden() -> str:
    """Help text of worker-only options (argparse.SUPPRESS)."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
