"""Issue #12, in other processes: the third-party notices a normal run (fit, resume,
predict) must not print, and the workers' death with their launcher under torchrun (the
bad-input catalogue: tests/test_bad_input_catalogue.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pyarrow.parquet as pq
import pytest

from tests.cli_helpers import SMALL_RUN, _sets
from tests.conftest import ROOT

# -------------------------------------------------------------- third-party notices


@pytest.mark.filterwarnings("ignore:.*dense_embedding_codegen_lookup_function.*:UserWarning")
def test_dense_tbe_gradients_are_right_despite_fbgemms_notice() -> None:
    """fbgemm's dense TBE (data-parallel tables) warns that no autograd kernel is
    registered; its CPU kernel is an autograd Function, and its gradients equal
    nn.EmbeddingBag's: the notice is filtered as harmless (quiet_known_warnings)."""
    import torch
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        DenseTableBatchedEmbeddingBagsCodegen,
    )

    torch.manual_seed(0)
    tbe = DenseTableBatchedEmbeddingBagsCodegen(
        [(10, 4), (7, 3)], pooling_mode=PoolingMode.MEAN, use_cpu=True
    )
    w = tbe.weights.detach()
    w0 = w[:40].view(10, 4).clone().requires_grad_()
    w1 = w[40:].view(7, 3).clone().requires_grad_()
    # 2 tables x 2 bags: table 0 bags [1, 2, 2], [9]; table 1 bags [0, 3], [6, 6, 1]
    out = tbe(torch.tensor([1, 2, 2, 9, 0, 3, 6, 6, 1]), torch.tensor([0, 3, 4, 6, 9]))
    ref = torch.cat(
        [
            torch.stack([w0[[1, 2, 2]].mean(0), w0[[9]].mean(0)]),
            torch.stack([w1[[0, 3]].mean(0), w1[[6, 6, 1]].mean(0)]),
        ],
        1,
    )
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(out, ref)
    assert tbe.weights.grad is not None
    torch.testing.assert_close(tbe.weights.grad, torch.cat([w0.grad.flatten(), w1.grad.flatten()]))


QUIET = [
    "autograd kernel was not registered",
    "Sharding spec not found",
    "caching params will be ignored",
    "is_fx_tracing",
    "Traceback",
]
SYNTHETIC = ROOT / "feature_specs" / "synthetic.yaml"
TINY = [
    *SMALL_RUN,
    "features[0].embedding.sharding=data_parallel",  # fbgemm's dense TBE, no sharding spec
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torchrec_ple", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_fit_resume_and_predict_print_no_third_party_notices(tmp_path: Path) -> None:
    from torchrec_ple.data.synthetic import generate
    from torchrec_ple.spec import load_spec

    _, valid = generate(load_spec(SYNTHETIC, TINY).data.synthetic)
    pq.write_table(valid.slice(0, 50), tmp_path / "new.parquet")
    runs = [
        ["fit", str(SYNTHETIC), "--out", "run", *_sets(TINY)],
        ["fit", str(SYNTHETIC), "--out", "run", "--resume", *_sets(TINY + ["train.epochs=2"])],
        [
            "predict",
            str(SYNTHETIC),
            "--checkpoint",
            "run",
            "--input",
            "new.parquet",
            "--output",
            "scores.parquet",
            *_sets(TINY),
        ],
    ]
    for args in runs:
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        for notice in QUIET:
            assert notice not in r.stderr + r.stdout, (args[0], r.stderr[-3000:])


# ---------------------------------------------------------------- the launcher's death


def _children(pid: int) -> List[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent reaps it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_workers_end_when_their_launcher_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "torchrun.log"
    settings = [s for s in TINY if "sharding" not in s] + ["train.epochs=1000"]
    with open(log, "w") as fh:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "torchrec_ple",
                "fit",
                str(SYNTHETIC),
                "--out",
                str(tmp_path / "run"),
                *_sets(settings),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            cwd=tmp_path,
        )
    workers: List[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and "epoch 0" not in log.read_text():
            assert launcher.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        workers = _children(launcher.pid)
        assert len(workers) == 2, log.read_text()[-3000:]
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(w) for w in workers):
            time.sleep(0.2)
        assert not [w for w in workers if _running(w)], "workers outlived their launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)


def test_end_with_launcher_outside_torchrun_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchrec_ple.train.distributed import end_with_launcher

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert end_with_launcher() is False
    # under a parent that is not torchrun's agent (here pytest) it is not set either
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert end_with_launcher() is False
