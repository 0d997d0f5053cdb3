"""``torchrec-ple serve``: a real server on a free loopback port, a real HTTP client.

Scores equal ``predict``'s (raw values) and the offline store's (entity keys, Feast) to
1e-6; every bad request gets its status and one message naming the field; a reload while
requests keep coming loses none. Skipped without fastapi/uvicorn (the Feast extra); the
Feast tests also need feast.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from tests.conftest import ROOT  # noqa: E402
from torchrec_ple.serving.batcher import MicroBatcher  # noqa: E402
from torchrec_ple.serving.online import BatchScores  # noqa: E402
from torchrec_ple.serving.score_request import ScoreRequest  # noqa: E402
from torchrec_ple.serving.server import ServeSettings, build_server  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

COUNTRIES = ["de", "fr", "us", "jp"]
TASKS = ["click", "spend"]


# ----------------------------------------------------------------------------- fixtures


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


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A 2-epoch fit and two exports: ``a`` (first checkpoint), ``b`` (last)."""
    from torchrec_ple.serving.export import export_model
    from torchrec_ple.spec import parse_spec
    from torchrec_ple.train.trainer import fit

    tmp = tmp_path_factory.mktemp("serve")
    pq.write_table(_rows(1200, 0), tmp / "train.parquet")
    pq.write_table(_rows(200, 1), tmp / "valid.parquet")
    spec = parse_spec(yaml.safe_dump(_spec_mapping(tmp / "train.parquet", tmp / "valid.parquet")))
    fit(spec, tmp / "run", log=lambda s: None)
    steps = sorted(p.name for p in (tmp / "run" / "checkpoints").iterdir())
    assert len(steps) == 2
    a = export_model(None, tmp / "run", tmp / "model_a", which=steps[0])
    b = export_model(None, tmp / "run", tmp / "model_b", which=steps[1])
    return {"tmp": tmp, "a": a, "b": b}


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


BAD_REQUESTS: List[Tuple[str, Any, int, str, str]] = [
    # (what, body (bytes: sent as is), status, field, part of the message)
    ("not JSON", b"{user: 1}", 400, "body", "invalid JSON"),
    ("empty body", b"", 400, "body", "found an empty body"),
    ("nested too deep", b"[" * 100_000, 400, "body", "invalid JSON"),
    ("not an object", b"[1, 2]", 400, "body", "found list"),
    ("neither key", {}, 422, "body", "exactly one of 'entities' or 'features', found neither"),
    ("both keys", {"entities": [], "features": []}, 422, "body", "found both"),
    ("unknown key", {"features": [], "rows": 1}, 422, "rows", "unknown key"),
    ("features not a list", {"features": {"age": [1]}}, 422, "features", "a list of objects"),
    ("no rows", {"features": []}, 422, "features", "at least one row"),
    ("row not an object", {"features": [1]}, 422, "features[0]", "an object, found 1"),
    (
        "missing column",
        {"features": [{"age": 1.0, "city_id": 1, "history": []}]},
        422,
        "features[0]",
        "the column 'country'",
    ),
    (
        "unknown column",
        {"features": [{"age": 1.0, "city_id": 1, "history": [], "country": "de", "agee": 2}]},
        422,
        "features[0].agee",
        "unknown column",
    ),
    (
        "number as text",
        {"features": [{"age": "31", "city_id": 1, "history": [], "country": "de"}]},
        422,
        "features[0].age",
        'a number or null, found "31"',
    ),
    (
        "fractional id",
        {"features": [{"age": 31, "city_id": 1.5, "history": [], "country": "de"}]},
        422,
        "features[0].city_id",
        "an integer id or null, found 1.5",
    ),
    (
        "id beyond int64",
        {"features": [{"age": 31, "city_id": 2**64, "history": [], "country": "de"}]},
        422,
        "features[0].city_id",
        "an integer id or null, found 18446744073709551616",
    ),
    (
        "list of objects",
        {"features": [{"age": 31, "city_id": 1, "history": [{"id": 1}], "country": "de"}]},
        422,
        "features[0].history",
        "a list of strings or integers",
    ),
    (
        "boolean category",
        {"features": [{"age": 31, "city_id": 1, "history": [], "country": True}]},
        422,
        "features[0].country",
        "a string, an integer or null, found true",
    ),
    (
        "entities without a store",
        {"entities": [{"user": 1}]},
        422,
        "entities",
        "this server reads no feature store",
    ),
    (
        "too many rows",
        {"features": [{"age": 1.0, "city_id": 1, "history": [], "country": "de"}] * 6},
        413,
        "features",
        "at most 5 rows per request, found 6",
    ),
    ("oversized body", b'{"features": [' + b" " * 200_000 + b"]}", 413, "body", "at most"),
    (
        "id out of range (the model's policy)",
        {"features": [{"age": 31.0, "city_id": 99, "history": [], "country": "de"}]},
        422,
        "city_id",
        "integer ids in [0, 20)",
    ),
]


def test_bad_requests(models) -> None:
    good = {"features": [{"age": 31.0, "city_id": 4, "history": [3], "country": "de"}]}
    with serving(ServeSettings(models["a"], port=0, max_rows=5)) as addr:
        for what, body, status, field, fragment in BAD_REQUESTS:
            raw = body if isinstance(body, bytes) else None
            got, _, out = call(addr, "POST", "/score", None if raw is not None else body, raw)
            assert got == status, (what, out)
            assert out["field"] == field, (what, out)
            assert fragment in out["error"] and "\n" not in out["error"], (what, out)
        for method, path, status in (("GET", "/nope", 404), ("GET", "/score", 405)):
            got, _, out = call(addr, method, path)
            assert got == status and out["field"] == "path", out
            assert f"found {method} {path}" in out["error"]
        # the server lives on: a good request still scores, every refusal was counted
        got, _, out = call(addr, "POST", "/score", good)
        assert got == 200 and len(out["scores"]) == 1
        big = {"features": [dict(good["features"][0], age=2**60)]}  # a number, not exact
        assert call(addr, "POST", "/score", big)[0] == 200
        _, _, text = call(addr, "GET", "/metrics")
        errors = sum(
            _metric(text, "torchrec_ple_request_errors_total", endpoint="/score", status=s)
            for s in ("400", "413", "422")
        )
        assert errors == len(BAD_REQUESTS)


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


# ----------------------------------------------------------------------------- Feast


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """tests/test_feast.py's repo (users 1..60), materialized for the TTL before END."""
    pytest.importorskip("feast")
    from tests.test_feast import END, TTL, apply_user_repo

    root = tmp_path_factory.mktemp("serve_feast")
    store = apply_user_repo(root, tags=False)
    store.materialize(END - TTL, END)
    (root / "feature_store.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "tests",
                "provider": "local",
                "registry": str(root / "registry.db"),
                "offline_store": {"type": "duckdb"},
                "online_store": {"type": "sqlite", "path": str(root / "online.db")},
                "entity_key_serialization_version": 3,
            }
        )
    )
    return {"root": root, "store": store, "end": END}


def test_entity_scores_equal_offline(models, feast_repo) -> None:
    import pandas as pd

    from torchrec_ple.data.feast import fill_nulls, historical_table
    from torchrec_ple.serving.predict import load_scorer

    users = [5, 61, 1, 2, 33, 62, 60, 17]  # 61, 62: unknown to Feast
    entity = pd.DataFrame({"user": users, "event_timestamp": [feast_repo["end"]] * len(users)})
    raw_offline = historical_table(feast_repo["store"], entity, "user_service")
    offline = fill_nulls(raw_offline, {"city_id": 0})
    with_city = [u for u, c in zip(users, raw_offline["city_id"].to_pylist()) if c is not None]
    expected = load_scorer(models["a"]).score_table(offline)
    settings = ServeSettings(
        models["a"], feast_repo=feast_repo["root"], fill={"city_id": 0}, port=0
    )
    with serving(settings) as addr:
        status, _, out = call(addr, "POST", "/score", {"entities": [{"user": u} for u in users]})
        assert status == 200, out
        np.testing.assert_allclose(_scores(out), expected, rtol=0, atol=1e-6)
        status, _, columnar = call(addr, "POST", "/score", {"entities": {"user": users[:3]}})
        assert status == 200
        np.testing.assert_allclose(_scores(columnar), expected[:3], rtol=0, atol=1e-6)
        status, _, meta = call(addr, "GET", "/metadata")
        assert meta["feast"]["entity_keys"] == {"user": "int"}
        assert meta["feast"]["refs"] == [f"user_features:{c}" for c in meta_columns(meta)]
        _, _, text = call(addr, "GET", "/metrics")
        assert _metric(text, "torchrec_ple_unknown_entities_total") == 3  # 61, 62, then 61
        assert (
            _metric(text, "torchrec_ple_rows_filled_total", feature="city_id", reason="fill") >= 3
        )
        assert _metric(text, "torchrec_ple_stage_seconds_count", stage="feature_read") == 2
        for body, field, fragment in (
            ({"entities": [{"usr": 1}]}, "entities[0].usr", "unknown key"),
            ({"entities": [{}]}, "entities[0]", "the join key 'user'"),
            ({"entities": [{"user": "1"}]}, "entities[0].user", 'an integer, found "1"'),
            ({"entities": {"user": [1, 2], "x": [1]}}, "entities", "lists of one length"),
        ):
            status, _, err = call(addr, "POST", "/score", body)
            assert status == 422 and err["field"] == field and fragment in err["error"], err
    # without --fill, an unknown entity's missing id is refused, saying what to do
    with serving(ServeSettings(models["a"], feast_repo=feast_repo["root"], port=0)) as addr:
        status, _, err = call(addr, "POST", "/score", {"entities": [{"user": 61}]})
        assert status == 422 and err["field"] == "city_id", err
        assert "start serve with --fill city_id=VALUE" in err["error"]
        assert call(addr, "POST", "/score", {"entities": [{"user": with_city[0]}]})[0] == 200


def meta_columns(meta: Dict[str, Any]) -> List[str]:
    return [c["name"] for c in meta["columns"]]


def test_feast_features_found_by_name_or_refused(models, feast_repo) -> None:
    from torchrec_ple.serving.export import load_saved_spec
    from torchrec_ple.serving.feast_online import feast_reader_factory
    from torchrec_ple.spec import DataError

    spec = load_saved_spec(models["a"])
    reader = feast_reader_factory(feast_repo["store"])(spec)  # no service: views by name
    assert reader.describe()["refs"] == [
        f"user_features:{c}" for c in ("age", "city_id", "history", "country")
    ]
    table, unknown, filled = reader.read([{"user": 1}, {"user": 999}])
    assert table.num_rows == 2 and unknown == 1 and filled == {}
    with pytest.raises(DataError, match="no_such_service"):
        feast_reader_factory(feast_repo["store"], "no_such_service")(spec)
    with pytest.raises(DataError, match="--fill column"):
        feast_reader_factory(feast_repo["store"], fill={"nope": 0})(spec)


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
