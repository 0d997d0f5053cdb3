"""``torchrec-ple serve``: a real server on a free loopback port, a real HTTP client.

Scores equal ``predict``'s (raw values) to 1e-6, micro-batched or not; a reload while
requests keep coming loses none; the command itself, and the micro-batcher's batching.
Bad requests and Feast entity keys: tests/test_serve_requests.py. Skipped without
fastapi/uvicorn (the Feast extra).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from tests.conftest import ROOT  # noqa: E402
from tests.serve_helpers import (  # noqa: E402
    TASKS,
    _metric,
    _predict,
    _raw_table,
    _scores,
    call,
    serving,
)
from torchrec_ple.serving.batcher import MicroBatcher  # noqa: E402
from torchrec_ple.serving.online import BatchScores  # noqa: E402
from torchrec_ple.serving.prometheus import ServeMetrics  # noqa: E402
from torchrec_ple.serving.score_request import ScoreRequest  # noqa: E402
from torchrec_ple.serving.server import ServeSettings  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


# ----------------------------------------------------------------------------- raw values


def test_raw_scores_equal_predict_and_endpoints(models) -> None:
    table = _raw_table(40)
    expected = _predict(models["a"], table)
    with serving(ServeSettings(models["a"], port=0)) as addr:
        status, headers, out = call(addr, "POST", "/score", {"features": table.to_pylist()})
        assert status == 200, out
        assert out["tasks"] == TASKS and len(out["scores"]) == 40
        np.testing.assert_allclose(_scores(out), expected, rtol=0, atol=1e-6)
        timing = headers["server-timing"]
        assert all(f"{s};dur=" in timing for s in ("queue", "transforms", "model"))
        # one row at a time: the same scores, in the same order
        for i in (0, 3, 39):
            status, _, one = call(addr, "POST", "/score", {"features": [table.to_pylist()[i]]})
            assert status == 200
            np.testing.assert_allclose(_scores(one)[0], expected[i], rtol=0, atol=1e-6)

        status, _, health = call(addr, "GET", "/health")
        assert status == 200 and health["status"] == "ok" and health["version"] == out["version"]
        status, _, meta = call(addr, "GET", "/metadata")
        assert status == 200 and meta["version"] == out["version"]
        assert [t["name"] for t in meta["tasks"]] == TASKS
        assert [c["name"] for c in meta["columns"]] == ["age", "city_id", "history", "country"]
        assert meta["training"]["validation"]["click"]["count"] == 200
        assert "feast" not in meta and meta["serving"]["threads"] == 1

        status, headers, text = call(addr, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert _metric(text, "torchrec_ple_requests_total", endpoint="/score", status="200") == 4
        assert _metric(text, "torchrec_ple_request_seconds_count", endpoint="/score") == 4
        assert _metric(text, "torchrec_ple_rows_scored_total", source="features") == 43
        oov = _metric(
            text, "torchrec_ple_rows_filled_total", feature="country", reason="out_of_vocabulary"
        )
        assert oov == 2  # row 3, in the batch of 40 and alone
        assert _metric(text, "torchrec_ple_rows_filled_total", feature="age", reason="filled") == 1
        assert _metric(text, "torchrec_ple_model_info", version=out["version"]) == 1


class Hammer:
    """``threads`` keep-alive clients sending one body until :meth:`stop`.

    Every request sent is recorded: its status and answer, or the exception it raised.
    """

    def __init__(self, addr: Tuple[str, int], body: Dict[str, Any], threads: int) -> None:
        self.results: List[Tuple[int, Any]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._data = json.dumps(body).encode()
        self._addr = addr
        self._pool = [threading.Thread(target=self._worker) for _ in range(threads)]
        for t in self._pool:
            t.start()

    def _worker(self) -> None:
        conn = http.client.HTTPConnection(*self._addr, timeout=60)
        while not self._stop.is_set():
            with self._lock:
                self.sent += 1
            try:
                conn.request("POST", "/score", self._data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                result: Tuple[int, Any] = (resp.status, json.loads(resp.read()))
            except Exception as e:  # a dropped connection is a lost request
                result = (-1, repr(e))
                conn = http.client.HTTPConnection(*self._addr, timeout=60)
            with self._lock:
                self.results.append(result)
        conn.close()

    def stop(self) -> List[Tuple[int, Any]]:
        self._stop.set()
        for t in self._pool:
            t.join()
        return self.results


def _concurrently(addr: Tuple[str, int], bodies: List[Dict[str, Any]]) -> List[Tuple[int, Any]]:
    """Each body sent at the same time on its own connection; answers in body order."""
    results: List[Tuple[int, Any]] = [(0, None)] * len(bodies)

    def one(i: int) -> None:
        status, _, out = call(addr, "POST", "/score", bodies[i])
        results[i] = (status, out)

    pool = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


def test_micro_batching_keeps_rows_apart(models) -> None:
    table = _raw_table(12)
    expected = _predict(models["a"], table)
    bodies = [{"features": [row]} for row in table.to_pylist()]
    bad = {"features": [dict(table.to_pylist()[0], city_id=99)]}  # on_out_of_range: error
    settings = ServeSettings(models["a"], port=0, batch_wait_us=50_000)
    with serving(settings) as addr:
        results = _concurrently(addr, bodies)
        for i, (status, out) in enumerate(results):
            assert status == 200, out
            np.testing.assert_allclose(_scores(out)[0], expected[i], rtol=0, atol=1e-6)
        _, _, text = call(addr, "GET", "/metrics")
        assert 1 <= _metric(text, "torchrec_ple_batch_rows_count") < len(bodies)  # batched
        # a bad request in the batch fails alone
        results = _concurrently(addr, bodies[:5] + [bad])
        for i, (status, out) in enumerate(results[:5]):
            assert status == 200, out
            np.testing.assert_allclose(_scores(out)[0], expected[i], rtol=0, atol=1e-6)
        status, out = results[5]
        assert status == 422 and out["field"] == "city_id", out


def _swap_in(src: Path, live: Path) -> None:
    """Replace a model folder as ``export --overwrite`` does: a complete copy renamed in."""
    work = live.with_name(live.name + ".new")
    shutil.copytree(src, work)
    old = live.with_name(live.name + ".old")
    live.rename(old)
    work.rename(live)
    shutil.rmtree(old)


def test_reload_under_load_loses_no_request(models) -> None:
    live = models["tmp"] / "live"
    shutil.copytree(models["a"], live)
    table = _raw_table(4)
    body = {"features": table.to_pylist()}
    expected = {"a": _predict(models["a"], table), "b": _predict(models["b"], table)}
    with serving(ServeSettings(live, port=0, batch_wait_us=200)) as addr:
        version_a = call(addr, "GET", "/health")[2]["version"]
        hammer = Hammer(addr, body, threads=4)
        time.sleep(0.3)
        _swap_in(models["b"], live)
        status, _, reload = call(addr, "POST", "/reload")
        time.sleep(0.3)
        results = hammer.stop()
        assert status == 200 and reload["previous"] == version_a, reload
        version_b = reload["version"]
        assert version_b != version_a
        assert len(results) == hammer.sent > 20
        assert all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:3]
        assert {r["version"] for _, r in results} == {version_a, version_b}
        for _, r in results:  # each answer is its own version's scores
            key = "a" if r["version"] == version_a else "b"
            np.testing.assert_allclose(_scores(r), expected[key], rtol=0, atol=1e-6)
        # a broken folder: refused, the loaded model keeps serving
        (live / "manifest.json").write_text("{}")
        status, _, refused = call(addr, "POST", "/reload")
        assert status == 409 and refused["field"] == "model_dir", refused
        assert f"still serving version {version_b}" in refused["error"]
        status, _, after = call(addr, "POST", "/score", body)
        assert status == 200 and after["version"] == version_b
        _, _, text = call(addr, "GET", "/metrics")
        assert _metric(text, "torchrec_ple_reloads_total", result="ok") == 1
        assert _metric(text, "torchrec_ple_reloads_total", result="failed") == 1


# ----------------------------------------------------------------------------- the command


def test_cli_serve_without_feast_and_sighup_reload(models) -> None:
    """The real command in its own process, with ``import feast`` failing there."""
    code = (
        "import sys; sys.modules['feast'] = None; "  # raw values must not need Feast
        "from torchrec_ple.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "serve", str(models["a"]), "--port", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = ""
        for _ in range(50):  # warnings may come first
            line = proc.stdout.readline()
            if line.startswith("serving ") or not line:
                break
        assert line.startswith(f"serving {models['a']}") and " on http://127.0.0.1:" in line, line
        addr = ("127.0.0.1", int(line.rsplit(":", 1)[1]))
        body = {"features": _raw_table(4).to_pylist()}
        status, _, out = call(addr, "POST", "/score", body)
        assert status == 200 and len(out["scores"]) == 4
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 60
        while (
            _metric(call(addr, "GET", "/metrics")[2], "torchrec_ple_reloads_total", result="ok") < 1
        ):
            assert time.time() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)
        assert call(addr, "POST", "/score", body)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_errors_are_one_line(models, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    import torch

    from torchrec_ple.cli import main

    threads = torch.get_num_threads()

    assert main(["serve", str(models["tmp"] / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "manifest.json" in err and "\n" not in err
    assert main(["serve", str(models["a"]), "--fill", "city_id"]) == 2
    assert "--fill COLUMN=VALUE" in capsys.readouterr().err
    assert main(["serve", str(models["a"]), "--max-rows", "0"]) == 2
    assert "--max-rows >= 1" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(models["a"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--port {port} free to listen on" in err and "\n" not in err
    torch.set_num_threads(threads)


class _SlowModel:
    """Stands in for an OnlineModel: a batch costs ``cost_s`` of blocking work, as scoring does."""

    task_names = ["a"]
    version = "v"

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s
        self.batches: List[int] = []

    def score_rows(self, rows: List[Dict[str, Any]]) -> BatchScores:
        time.sleep(self.cost_s)  # blocks the loop, as the real scorer does
        self.batches.append(len(rows))
        return BatchScores(np.array([[r["x"]] for r in rows], dtype=np.float32), {})


def _closed_loop(batcher: MicroBatcher, clients: int, rounds: int) -> List[List[float]]:
    """``clients`` clients that each send again once answered; each one's queue waits."""

    async def client(c: int) -> List[float]:
        waits = []
        for r in range(rounds):
            out = await batcher.score(ScoreRequest("features", [{"x": c * 1000 + r}]))
            assert out.scores[0, 0] == c * 1000 + r  # its own row back
            waits.append(out.queue_s)
            await asyncio.sleep(0)  # the answer goes out, the next request comes in
        return waits

    async def run() -> List[List[float]]:
        return list(await asyncio.gather(*(client(c) for c in range(clients))))

    return asyncio.run(run())


def test_batcher_batches_concurrent_clients_and_scores_a_lone_one_at_once() -> None:
    # 8 clients that each send again once answered: their requests are scored together
    model = _SlowModel(cost_s=0.004)
    batcher = MicroBatcher(lambda: model, wait_us=3000)  # type: ignore[arg-type,return-value]
    _closed_loop(batcher, clients=8, rounds=10)
    assert sum(model.batches) == 80
    assert len(model.batches) <= 20, model.batches  # batched: not 80 batches of 1
    # a lone client: once its requests come further apart than the wait, each is scored
    # at once instead of after wait_us (the first ones still wait: the 8 were just here)
    model.batches.clear()
    (lone,) = _closed_loop(batcher, clients=1, rounds=10)
    assert model.batches == [1] * 10
    assert max(lone[-5:]) < 0.001, lone


def test_metrics_of_two_servers_stay_apart_under_feasts_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # importing Feast sets PROMETHEUS_MULTIPROC_DIR: prometheus_client then keeps values in
    # files shared by every metric of one name in the process (as in a full test run)
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    a, b = ServeMetrics(lambda: 0), ServeMetrics(lambda: 0)
    a.request("/score", 422, 0.001)
    b.request("/score", 422, 0.001)  # b's own count: 1, not 1 + a's
    a.serving("v1")
    a.reload(True, "v1", "v2")
    text_a, text_b = (m.render()[0].decode() for m in (a, b))
    errors = dict(name="torchrec_ple_request_errors_total", endpoint="/score", status="422")
    assert _metric(text_a, **errors) == 1 and _metric(text_b, **errors) == 1
    assert _metric(text_a, "torchrec_ple_model_info", version="v2") == 1
    assert "v1" not in text_a  # the reloaded model's old version is gone
