"""The FastAPI application of ``torchrec-ple serve`` (see :mod:`torchrec_ple.serving.server`).

Imports fastapi and starlette at module level (FastAPI reads the endpoints' annotations):
:mod:`~torchrec_ple.serving.server` imports this module only once it has checked they
are installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Optional, Set, Tuple

import numpy as np
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from torchrec_ple.serving.batcher import MicroBatcher, QueueFull, Scored
from torchrec_ple.serving.prometheus import ServeMetrics
from torchrec_ple.serving.score_request import (
    ENTITIES,
    RequestError,
    parse_body,
    parse_score_request,
)
from torchrec_ple.serving.server import ModelHolder, ServeSettings, freeze_heap
from torchrec_ple.spec.errors import DataError, SpecError

logger = logging.getLogger("torchrec_ple")


def _json(payload: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return Response(body, status, headers=headers, media_type="application/json")


def _error(status: int, field: str, message: str) -> Response:
    return _json({"error": f"{field}: {message}", "field": field}, status)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0][:300] if lines else "") or type(e).__name__


def _score_payload(scored: Scored) -> Dict[str, Any]:
    tasks = scored.tasks
    rows = scored.scores.tolist()
    if not np.isfinite(scored.scores).all():  # JSON has no NaN or inf: such a score is null
        rows = [[v if math.isfinite(v) else None for v in row] for row in rows]
    return {
        "version": scored.version,
        "tasks": tasks,
        "scores": [dict(zip(tasks, row)) for row in rows],
    }


def _server_timing(scored: Scored, total_s: float) -> str:
    t = scored.times
    parts = [
        ("queue", scored.queue_s),
        ("feature_read", t.feature_read),
        ("transforms", t.transforms),
        ("model", t.model),
        ("total", total_s),
    ]
    return ", ".join(f"{name};dur={sec * 1000:.3f}" for name, sec in parts)


class _App:
    """The endpoints' state: the model holder, the batcher and the metrics."""

    def __init__(self, holder: ModelHolder, settings: ServeSettings) -> None:
        self.holder = holder
        self.settings = settings
        self.metrics = ServeMetrics(lambda: self.batcher.queued())
        self.batcher = MicroBatcher(
            lambda: holder.current,
            settings.max_batch_rows,
            settings.batch_wait_us,
            settings.max_queue,
            on_batch=self.metrics.batch,
        )
        self.metrics.serving(holder.current.version)

    async def score(self, body: bytes) -> Tuple[Any, int]:
        """The ``POST /score`` response and its status."""
        t0 = time.perf_counter()
        kind = ""
        try:
            model = self.holder.current
            reader = model.reader
            request = parse_score_request(
                parse_body(body, self.settings.max_body_bytes),
                model.columns,
                model.kinds,
                reader.join_keys if reader is not None else None,
                self.settings.max_rows,
            )
            kind = request.kind
            scored = await self.batcher.score(request)
        except RequestError as e:
            return _error(e.status, e.field, e.message), e.status
        except QueueFull as e:
            return _error(503, "server", f"a free place in the queue, found {e}"), 503
        except (DataError, SpecError) as e:  # a value the model's policies refuse
            return self._refused_value(e, kind), 422
        except Exception as e:  # never let a request take the server down
            logger.exception("scoring failed")
            return _error(
                500, "server", f"scoring failed ({type(e).__name__}: {_one_line(e)})"
            ), 500
        self.metrics.queue_wait(scored.queue_s)
        total = time.perf_counter() - t0
        headers = {
            "Server-Timing": _server_timing(scored, total),
            "X-Batch-Rows": str(scored.batch_rows),
        }
        return _json(_score_payload(scored), 200, headers), 200

    def _refused_value(self, e: Exception, kind: str) -> Response:
        """422 for a value the transforms refuse; for store rows, how ``--fill`` helps."""
        field = getattr(e, "column", None) or "body"
        message = str(e)
        reader = self.holder.current.reader
        if kind == ENTITIES and reader is not None and field in reader.columns:
            if field not in reader.fill:
                message += (
                    f" (the online store had no '{field}' value, e.g. for an unknown entity: "
                    f"start serve with --fill {field}=VALUE)"
                )
        return _json({"error": message, "field": field}, 422)

    async def reload(self) -> Tuple[Any, int]:
        """The ``POST /reload`` response and its status."""
        before = self.holder.current.version
        try:
            old, new, seconds = await asyncio.to_thread(self.holder.reload)
        except Exception as e:  # a broken folder: keep serving the loaded model
            self.metrics.reload(False, before, before)
            message = (
                f"a loadable model folder, found {_one_line(e)} (still serving version {before})"
            )
            logger.warning("reload of %s refused: %s", self.settings.model_dir, message)
            return _error(409, "model_dir", message), 409
        freeze_heap()  # on the loop, between batches: the old model is garbage now
        self.metrics.reload(True, old, new)
        logger.warning("reloaded %s: version %s -> %s", self.settings.model_dir, old, new)
        return _json({"version": new, "previous": old, "seconds": round(seconds, 3)}), 200

    def metadata(self) -> Dict[str, Any]:
        s = self.settings
        meta = self.holder.current.metadata()
        meta["serving"] = {
            "batch_wait_us": s.batch_wait_us,
            "max_batch_rows": s.max_batch_rows,
            "max_rows": s.max_rows,
            "max_queue": s.max_queue,
            "threads": s.threads,
        }
        return meta


def create_app(holder: ModelHolder, settings: ServeSettings, url: str = "") -> FastAPI:
    """The FastAPI application of ``torchrec-ple serve`` (see the module doc).

    Args:
        holder (ModelHolder): the served model.
        settings (ServeSettings): batching, limits and threads.
        url (str): where it listens, for the line printed once it is ready.
    """
    state = _App(holder, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _handle_sighup(state)
        freeze_heap()  # no full collection of the loaded libraries while serving
        if url:
            m = holder.current
            print(
                f"serving {settings.model_dir} (version {m.version}, tasks "
                f"{', '.join(m.task_names)}) on {url}",
                flush=True,
            )
        try:
            yield
        finally:
            state.batcher.drain()  # requests still pending are answered, not dropped

    app = FastAPI(title="torchrec-ple", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state

    def timed(endpoint: str, response: Any, status: int, t0: float) -> Any:
        state.metrics.request(endpoint, status, time.perf_counter() - t0)
        return response

    @app.post("/score")
    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        limit = settings.max_body_bytes
        body = await _read_body(request, limit)
        if body is None:
            response, status = _error(413, "body", f"at most {limit} bytes, found more"), 413
        else:
            response, status = await state.score(body)
        return timed("/score", response, status, t0)

    @app.post("/reload")
    async def reload() -> Response:
        t0 = time.perf_counter()
        response, status = await state.reload()
        return timed("/reload", response, status, t0)

    @app.get("/health")
    async def health() -> Response:
        t0 = time.perf_counter()
        payload = {
            "status": "ok",
            "version": holder.current.version,
            "queued": state.batcher.queued(),
        }
        return timed("/health", _json(payload), 200, t0)

    @app.get("/metadata")
    async def metadata() -> Response:
        t0 = time.perf_counter()
        return timed("/metadata", _json(state.metadata()), 200, t0)

    @app.get("/metrics")
    async def metrics() -> Response:
        t0 = time.perf_counter()
        body, content_type = state.metrics.render()
        return timed("/metrics", Response(body, media_type=content_type), 200, t0)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        state.metrics.request("other", exc.status_code, 0.0)
        routes = "POST /score, POST /reload, GET /health, GET /metadata, GET /metrics"
        found = f"{request.method} {path} ({exc.detail})"
        return _error(exc.status_code, "path", f"one of {routes}, found {found}")

    return app


async def _read_body(request: Request, limit: int) -> Optional[bytes]:
    """The body, or None once it passes ``limit`` bytes (read no further)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def _handle_sighup(state: _App) -> None:
    """``kill -HUP <pid>`` reloads the model (main thread only; elsewhere: not installed)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return
    loop = asyncio.get_running_loop()
    running: Set[asyncio.Task[Any]] = set()  # the loop keeps only weak references

    def on_hup() -> None:
        task = loop.create_task(state.reload())
        running.add(task)
        task.add_done_callback(running.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError, ValueError):
        pass
