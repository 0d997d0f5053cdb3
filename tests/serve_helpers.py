"""What tests/test_serve.py and tests/test_serve_requests.py share: the rows and spec of
the model they serve (fitted by the ``models`` fixture of tests/conftest.py), a real server
in a thread, one HTTP request, and reading scores and metrics.

Imported only after ``pytest.importorskip`` of fastapi, uvicorn and prometheus_client.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import pyarrow as pa

from torchrec_ple.serving.server import ServeSettings, build_server

COUNTRIES = ["de", "fr", "us", "jp"]
TASKS = ["click", "spend"]


# ---------------------------------------------------------------- the data and the spec


def _rows(n: int, seed: int) -> pa.Table:
    """Rows with the Feast test repo's columns (tests/test_feast.py) and two labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, n)
    history = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32()),
        pa.array(rng.integers(0, 50, int(lengths.sum())), pa.int64()),
    )
    age = rng.uniform(18, 80, n)
    city = rng.integers(1, 20, n)
    click = rng.random(n) < 1 / (1 + np.exp(-(age - 45) / 10 - (city % 3 == 0)))
    return pa.table(
        {
            "age": pa.array(age, pa.float32()),
            "city_id": pa.array(city, pa.int64()),
            "history": history,
            "country": pa.array(rng.choice(COUNTRIES, n)),
            "click": click.astype(np.int64),
            "spend": np.round(age / 10 + lengths + rng.random(n), 2),
        }
    )


def _spec_mapping(train: Path, valid: Path) -> Dict[str, Any]:
    return {
        "data": {"train": {"path": str(train)}, "validation": {"path": str(valid)}},
        "features": [
            {"name": "age", "type": "numeric"},
            {
                "name": "city_id",
                "type": "categorical",
                "num_embeddings": 20,
                "embedding": {"dim": 4},
            },
            {"name": "history", "type": "sequence", "embedding": {"dim": 4, "pooling": "mean"}},
            {"name": "country", "type": "categorical", "embedding": {"dim": 4}},
        ],
        "tasks": [
            {"name": "click", "label": "click", "type": "binary"},
            {"name": "spend", "label": "spend", "type": "regression"},
        ],
        "model": {"architecture": "ple", "levels": 1, "expert_dims": [8], "tower_dims": [4]},
        "train": {"batch_size": 256, "epochs": 2, "progress": False, "tensorboard": False},
    }


@contextmanager
def serving(settings: ServeSettings) -> Iterator[Tuple[str, int]]:
    """A real server (uvicorn, the app of ``serve``) on a free port, in a thread."""
    import torch

    threads = torch.get_num_threads()
    server, sock, _ = build_server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        torch.set_num_threads(threads)  # serve sets 1 thread; later tests train


def call(
    addr: Tuple[str, int], method: str, path: str, body: Any = None, raw: Optional[bytes] = None
) -> Tuple[int, Dict[str, str], Any]:
    """(status, headers, JSON or text) of one request on a new connection."""
    conn = http.client.HTTPConnection(*addr, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, data, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    if headers.get("content-type", "").startswith("application/json"):
        return resp.status, headers, json.loads(text)
    return resp.status, headers, text


def _scores(payload: Dict[str, Any]) -> np.ndarray:
    return np.array([[row[t] for t in payload["tasks"]] for row in payload["scores"]])


def _metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def _predict(model_dir: Path, table: pa.Table) -> np.ndarray:
    from torchrec_ple.serving.predict import load_scorer, predict_table

    out = predict_table(load_scorer(model_dir), table)
    return np.stack([out.column(t).to_numpy() for t in TASKS], axis=1)


def _raw_table(n: int) -> pa.Table:
    """Rows to score, with what the transforms fill: a null age and history, an unknown
    country (out of vocabulary); ``n >= 4``."""
    table = _rows(n, 7).drop_columns(["click", "spend"])
    rows = table.to_pylist()
    rows[1]["age"] = None
    rows[2]["history"] = None
    rows[3]["country"] = "zz"
    return pa.Table.from_pylist(rows, schema=table.schema)
