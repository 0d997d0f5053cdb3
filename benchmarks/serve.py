"""``torchrec-ple serve`` under load: requests/s and p50/p99 latency, split by stage.

The server runs as its own process (``python -m torchrec_ple serve``) on the Feast example
(``examples/feast``: built once into ``--data-dir``: ``make_data.py``, ``feast apply``,
``train.py --epochs 1``, ``serve.py`` which materializes the online store and checks
online == offline scores). This process is the load generator: ``concurrency`` threads,
each with a keep-alive ``http.client`` connection, send a fixed number of ``POST /score``
requests (loopback only) with 1 or 100 entity keys (users drawn at random, ~4% unknown to
Feast), after a warm-up. Latency is measured by the client; the split comes from each
response's ``Server-Timing`` header (its batch's ``feature_read`` (Feast online read),
``transforms``, ``model``, and the request's ``queue`` wait), medians over requests;
``batch rows`` is the mean size of the micro-batch a request was scored in
(``X-Batch-Rows``).

Configs (one server each): micro-batching with ``--batch-wait-us`` (default 1000) at
every concurrency and request size; for single-entity requests at concurrency 8 and 32,
micro-batching without a wait, and no batching (``--max-batch-rows 1``). The server's CPU
time per request (``/proc/PID/stat``) is reported too: on a shared machine it says more
about capacity than the wall-clock rates. Targets (issue #14, 2 cores): single-entity
p99 <= 20 ms at concurrency 8, and >= 500 requests/s at concurrency 32 with
micro-batching.

    python -m benchmarks.serve [--quick] [--requests N] [--batch-wait-us US]
                               [--model DIR --feast-repo DIR]
"""

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.common import (
    REPO_ROOT,
    base_parser,
    data_dir,
    fmt,
    markdown_table,
    median,
    out_path,
    write_json,
)

EXAMPLE = REPO_ROOT / "examples" / "feast"
STAGES = ("queue", "feature_read", "transforms", "model")
P99_TARGET_MS = 20.0
RPS_TARGET = 500.0


# ----------------------------------------------------------------------------- the example


def _run(cmd: Sequence[str], cwd: Path, what: str) -> None:
    r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stdout + r.stderr)[-2000:]
        raise SystemExit(f"{what} failed (exit {r.returncode}):\n{tail}")


def prepare_example(work: Path, users: int) -> Tuple[Path, Path, Dict[str, Any]]:
    """The Feast example built in ``work`` (reused when already built).

    Returns:
        Tuple[Path, Path, Dict[str, Any]]: the model folder, the feature repo and the
        example's ``data/meta.json``.
    """
    model, repo = work / "runs" / "demo" / "model", work / "feature_repo"
    done = work / ".built"
    if not done.is_file() or done.read_text() != str(users):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for name in ("make_data.py", "train.py", "serve.py", "spec.yaml"):
            shutil.copy(EXAMPLE / name, work / name)
        repo.mkdir()
        for name in ("definitions.py", "feature_store.yaml"):
            shutil.copy(EXAMPLE / "feature_repo" / name, repo / name)
        py, feast = sys.executable, str(Path(sys.executable).with_name("feast"))
        print(f"building the Feast example in {work} ...", flush=True)
        _run([py, "make_data.py", "--users", str(users)], work, "make_data.py")
        _run([feast, "-c", "feature_repo", "apply"], work, "feast apply")
        _run([py, "train.py", "--epochs", "1"], work, "train.py")
        _run([py, "serve.py"], work, "serve.py (materialize, online == offline)")
        done.write_text(str(users))
    meta = json.loads((work / "data" / "meta.json").read_text())
    return model, repo, meta


# ----------------------------------------------------------------------------- the server


class Server:
    """``torchrec-ple serve`` in a subprocess on a free loopback port.

    Args:
        model (Path): the model folder.
        repo (Path): the Feast repo.
        options (Sequence[str]): more ``serve`` options (batching).
    """

    def __init__(self, model: Path, repo: Path, options: Sequence[str]) -> None:
        cmd = [sys.executable, "-m", "torchrec_ple", "serve", str(model), "--port", "0"]
        cmd += ["--feast-repo", str(repo), "--feature-service", "user_service"]
        cmd += ["--fill", "city_id=0", *options]
        self.command = cmd
        self._proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.host, self.port = self._wait_ready(timeout=300)

    def _wait_ready(self, timeout: float) -> Tuple[str, int]:
        deadline = time.time() + timeout
        assert self._proc.stdout is not None
        lines = []
        while time.time() < deadline:
            line = self._proc.stdout.readline()
            if not line and self._proc.poll() is not None:
                break
            lines.append(line)
            if line.startswith("serving ") and " on http://" in line:
                host, port = line.rsplit("http://", 1)[1].strip().rsplit(":", 1)
                threading.Thread(target=self._drain, daemon=True).start()
                return host, int(port)
        self.stop()
        raise SystemExit("the server did not start:\n" + "".join(lines)[-2000:])

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the server process has used so far (Linux)."""
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _drain(self) -> None:
        assert self._proc.stdout is not None
        for _ in self._proc.stdout:
            pass

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


# ----------------------------------------------------------------------------- the load


def request_bodies(rows: int, count: int, users: int, seed: int) -> List[bytes]:
    """``count`` entity request bodies of ``rows`` users each (~4% unknown to Feast)."""
    rng = random.Random(seed)
    top = users + max(1, users // 25)  # ids above --users have no feature row
    return [
        json.dumps({"entities": {"user": [rng.randint(1, top) for _ in range(rows)]}}).encode()
        for _ in range(count)
    ]


def _timing(header: Optional[str]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for part in (header or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def run_load(host: str, port: int, bodies: List[bytes], concurrency: int) -> Dict[str, Any]:
    """Send every body once from ``concurrency`` keep-alive connections.

    Returns:
        Dict[str, Any]: wall seconds, per-request latencies (ms), stage times and errors.
    """
    lock = threading.Lock()
    state: Dict[str, Any] = {"next": 0, "errors": 0, "first_error": ""}
    latencies: List[float] = []
    stages: Dict[str, List[float]] = {s: [] for s in STAGES + ("batch_rows",)}

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        headers = {"Content-Type": "application/json"}
        mine: List[Tuple[float, Dict[str, float]]] = []
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(bodies):
                break
            t0 = time.perf_counter()
            conn.request("POST", "/score", bodies[i], headers)
            response = conn.getresponse()
            payload = response.read()
            ms = (time.perf_counter() - t0) * 1000
            if response.status != 200:
                with lock:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or payload.decode()[:300]
                continue
            timing = _timing(response.getheader("Server-Timing"))
            timing["batch_rows"] = float(response.getheader("X-Batch-Rows") or "nan")
            mine.append((ms, timing))
        conn.close()
        with lock:
            for ms, timing in mine:
                latencies.append(ms)
                for s in stages:
                    stages[s].append(timing.get(s, 0.0))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "latencies_ms": latencies, "stages_ms": stages, **state}


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``xs``; NaN for none."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * len(s))) - 1))]


def summarize(result: Dict[str, Any], rows: int) -> Dict[str, Any]:
    """Requests/s, rows/s, p50/p99 latency and median stage times of one load run."""
    lat = result["latencies_ms"]
    ok = len(lat)
    out = {
        "requests": ok + result["errors"],
        "errors": result["errors"],
        "first_error": result["first_error"],
        "requests_per_s": ok / result["wall_s"],
        "rows_per_s": ok * rows / result["wall_s"],
        "p50_ms": percentile(lat, 0.50),
        "p99_ms": percentile(lat, 0.99),
    }
    for s in STAGES:
        out[f"{s}_ms"] = median(result["stages_ms"][s])
    rows_seen = result["stages_ms"]["batch_rows"]
    out["mean_batch_rows"] = sum(rows_seen) / len(rows_seen) if rows_seen else float("nan")
    return out


# ----------------------------------------------------------------------------- scenarios


def scenarios(args: Any) -> List[Dict[str, Any]]:
    """(config, server options, rows per request, concurrency, requests) of every run.

    Micro-batching (``--batch-wait-us``) at every concurrency and request size; for
    single-entity requests at concurrency > 1, also micro-batching without a wait (batches
    of what arrived while the previous one was scored) and no batching at all.
    """
    wait = args.batch_wait_us
    configs = [
        (f"micro-batching, wait {wait} us", ["--batch-wait-us", str(wait)], (1, 100)),
        ("micro-batching, wait 0", ["--batch-wait-us", "0"], (1,)),
        ("no batching", ["--max-batch-rows", "1", "--batch-wait-us", "0"], (1,)),
    ]
    out = []
    for k, (name, options, sizes) in enumerate(configs):
        if k > 0 and wait == 0 and "wait 0" in name:
            continue  # the same server as the first config
        for rows in sizes:
            for c in args.concurrency:
                if k > 0 and c == 1:
                    continue
                n = args.requests if c > 1 else max(50, args.requests // 4)
                n = n if rows == 1 else max(20, n // 10)
                out.append({"config": name, "options": options, "rows": rows, "c": c, "n": n})
    return out


def measure(args: Any, model: Path, repo: Path, users: int) -> List[Dict[str, Any]]:
    """Run every scenario, one server per config, and summarize each."""
    results = []
    by_config: Dict[str, List[Dict[str, Any]]] = {}
    for sc in scenarios(args):
        by_config.setdefault(sc["config"], []).append(sc)
    for config, runs in by_config.items():
        server = Server(model, repo, runs[0]["options"])
        try:
            for k, sc in enumerate(runs):
                warm = request_bodies(sc["rows"], args.warmup, users, seed=1000 + k)
                run_load(server.host, server.port, warm, sc["c"])
                bodies = request_bodies(sc["rows"], sc["n"], users, seed=k)
                cpu = server.cpu_seconds()
                summary = summarize(run_load(server.host, server.port, bodies, sc["c"]), sc["rows"])
                summary["server_cpu_ms"] = (server.cpu_seconds() - cpu) * 1000 / sc["n"]
                row = {k2: sc[k2] for k2 in ("config", "rows", "c")} | summary
                results.append(row)
                print(
                    f"{config}, {sc['rows']} rows/request, concurrency {sc['c']}: "
                    f"{row['requests_per_s']:,.0f} req/s, p50 {row['p50_ms']:.1f} ms, "
                    f"p99 {row['p99_ms']:.1f} ms, {row['errors']} errors",
                    flush=True,
                )
        finally:
            server.stop()
    return results


def target_lines(results: List[Dict[str, Any]]) -> List[Tuple[str, bool]]:
    """The issue's two targets, with PASS/MISS."""

    def find(config: str, c: int) -> Optional[Dict[str, Any]]:
        return next(
            (r for r in results if r["config"] == config and r["rows"] == 1 and r["c"] == c), None
        )

    out = []
    batched = results[0]["config"] if results else ""
    r8 = find(batched, 8)
    if r8 is not None:
        ok = r8["p99_ms"] <= P99_TARGET_MS and r8["errors"] == 0
        line = (
            f"single-entity p99 at concurrency 8, {batched}: {r8['p99_ms']:.1f} ms "
            "(target <= 20 ms)"
        )
        out.append((f"{line}: {'PASS' if ok else 'MISS'}", ok))
    r32 = find(batched, 32)
    if r32 is not None:
        ok = r32["requests_per_s"] >= RPS_TARGET and r32["errors"] == 0
        line = (
            f"single-entity requests/s at concurrency 32, {batched}: "
            f"{r32['requests_per_s']:,.0f} (target >= 500)"
        )
        out.append((f"{line}: {'PASS' if ok else 'MISS'}", ok))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = base_parser("serve", __doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="requests per single-entity run")
    p.add_argument("--warmup", type=int, default=None, help="warm-up requests per run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batch-wait-us", type=int, default=1000)
    p.add_argument("--users", type=int, default=500, help="users of the example data")
    p.add_argument("--model", type=Path, help="a model folder (with --feast-repo)")
    p.add_argument("--feast-repo", type=Path, help="its Feast repo, materialized")
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args(argv)
    args.requests = args.requests or (200 if args.quick else 2000)
    args.warmup = args.warmup or (20 if args.quick else 200)
    if args.model is not None and args.feast_repo is not None:
        model, repo, users = args.model, args.feast_repo, args.users
    else:
        model, repo, meta = prepare_example(data_dir(args.data_dir) / "serve_example", args.users)
        users = int(meta["users"])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"model {model}; {os.cpu_count()} CPUs; load average at start {load}")
    results = measure(args, model, repo, users)
    print_table(results)
    targets = target_lines(results)
    for line, _ in targets:
        print(line)
    path = write_json(
        out_path("serve", args),
        "serve",
        args,
        {"model": model, "results": results, "targets": [t for t, _ in targets]},
    )
    print(f"wrote {path}")
    return 0


def print_table(results: List[Dict[str, Any]]) -> None:
    headers = ["config", "rows/req", "conc", "req/s", "rows/s", "p50 ms", "p99 ms", "batch rows"]
    headers += [f"{s} ms" for s in STAGES] + ["server CPU ms/req", "errors"]
    rows = [
        [r["config"], r["rows"], r["c"], fmt(r["requests_per_s"]), fmt(r["rows_per_s"])]
        + [fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1), fmt(r["mean_batch_rows"], 1)]
        + [fmt(r[f"{s}_ms"], 2) for s in STAGES]
        + [fmt(r["server_cpu_ms"], 2), r["errors"]]
        for r in results
    ]
    print()
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    sys.exit(main())
