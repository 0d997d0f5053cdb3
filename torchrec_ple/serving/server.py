"""``torchrec-ple serve``: an HTTP scorer beside the feature store (FastAPI + uvicorn).

Endpoints:

* ``POST /score``: entity keys (features read from the Feast online store) or raw feature
  values (see :mod:`~torchrec_ple.serving.score_request`) -> every task's score per row,
  in request order: ``{"version", "tasks", "scores": [{task: score}, ...]}``. The
  ``Server-Timing`` header gives the batch's time per stage (``queue``, ``feature_read``,
  ``transforms``, ``model``) in milliseconds, ``X-Batch-Rows`` the rows of its batch;
* ``GET /health``, ``GET /metadata`` (tasks, features, version, training metrics),
  ``GET /metrics`` (Prometheus text, :mod:`~torchrec_ple.serving.prometheus`);
* ``POST /reload`` (or ``SIGHUP``): load the model folder again, whole, then swap it in;
  requests already in a batch finish on the old model, none is dropped.

Refusals are ``{"error": "<field>: <expected>, found <what>", "field": ...}`` with a 4xx
status; an unexpected failure is a 500 with one line; the server keeps serving either way.
One process, one model: concurrent requests are micro-batched on the event loop
(:class:`~torchrec_ple.serving.batcher.MicroBatcher`) and torch runs ``threads``
intra-op threads (1 by default: a batch of a few rows gains nothing from more, and the
other cores stay free for the load balancer, Feast and the clients).

Needs ``fastapi`` and ``uvicorn`` (the Feast extra); Feast only with ``--feast-repo``.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

from torchrec_ple.serving.online import OnlineModel, load_online_model
from torchrec_ple.spec.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import uvicorn

logger = logging.getLogger("torchrec_ple")


@dataclass
class ServeSettings:
    """Options of ``torchrec-ple serve``.

    Args:
        model_dir (Path): an exported model folder (``torchrec-ple export``).
        feast_repo (Optional[Path]): a Feast repo (``feature_store.yaml``); None: raw
            feature values only.
        feature_service (Optional[str]): the feature service to read; default: the
            spec's ``data.feast`` features, else the views holding the model's columns.
        fill (Dict[str, Any]): values for store nulls per column (e.g. ``city_id: 0``).
        host (str): address to listen on. Default: ``127.0.0.1``.
        port (int): port; 0 picks a free one. Default: 8000.
        batch_wait_us (int): micro-batching wait after a batch's first request. Default: 1000.
        max_batch_rows (int): rows per micro-batch. Default: 256.
        max_rows (int): rows per request; more are refused (413). Default: 1000.
        max_queue (int): requests waiting for a batch; more are refused (503). Default: 1024.
        threads (int): torch intra-op threads. Default: 1.
        access_log (bool): log every request (uvicorn). Default: False.
    """

    model_dir: Path
    feast_repo: Optional[Path] = None
    feature_service: Optional[str] = None
    fill: Dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    batch_wait_us: int = 1000
    max_batch_rows: int = 256
    max_rows: int = 1000
    max_queue: int = 1024
    threads: int = 1
    access_log: bool = False

    @property
    def max_body_bytes(self) -> int:
        """The largest request body taken: 64 KiB plus 8 KiB per row allowed."""
        return 65536 + 8192 * self.max_rows

    def check(self) -> None:
        """Refuse settings out of range (one line naming the option)."""
        limits = {
            "--port": (self.port, 0, 65535),
            "--batch-wait-us": (self.batch_wait_us, 0, 1_000_000),
            "--max-batch-rows": (self.max_batch_rows, 1, None),
            "--max-rows": (self.max_rows, 1, None),
            "--max-queue": (self.max_queue, 1, None),
            "--threads": (self.threads, 1, None),
        }
        for name, (value, lo, hi) in limits.items():
            if value < lo or (hi is not None and value > hi):
                span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise DataError(expected=f"{name} {span}", found=str(value))


def parse_fill(items: Sequence[str]) -> Dict[str, Any]:
    """``--fill COLUMN=VALUE`` options as ``{column: value}`` (an integer, a number, or text).

    Raises:
        DataError: an item without ``=`` or without a column name.
    """
    out: Dict[str, Any] = {}
    for item in items:
        column, sep, text = item.partition("=")
        if not sep or not column.strip():
            raise DataError(expected="--fill COLUMN=VALUE, e.g. --fill city_id=0", found=repr(item))
        value: Any = text
        for cast in (int, float):
            try:
                value = cast(text)
                break
            except ValueError:
                continue
        out[column.strip()] = value
    return out


class ModelHolder:
    """The served model; :meth:`reload` loads the folder again and swaps it in whole.

    Args:
        loader (Callable[[], OnlineModel]): loads the model folder (and its store reader).
    """

    def __init__(self, loader: Callable[[], OnlineModel]) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._model = loader()

    @property
    def current(self) -> OnlineModel:
        return self._model

    def reload(self) -> Tuple[str, str, float]:
        """Load the folder, then swap; the old model serves until then (and keeps serving
        if loading fails).

        Returns:
            Tuple[str, str, float]: (old version, new version, seconds taken).
        """
        with self._lock:
            t0 = time.perf_counter()
            new = self._loader()
            old, self._model = self._model, new  # one reference swap: atomic
            return old.version, new.version, time.perf_counter() - t0


def freeze_heap(collect: bool = True) -> None:
    """Move every live object out of the garbage collector's sight (``gc.freeze``).

    torch, torchrec, Feast and pandas leave ~0.5M long-lived objects: a full collection,
    which Python starts on its own every so often, then takes hundreds of milliseconds
    (0.75 s measured on 2 busy cores), every request waiting behind it. Frozen, they are
    never scanned. ``collect`` first frees what is garbage now (an old model's reference
    cycles; one such pause, at startup or reload: on the event loop, between batches, so
    no batch still holds the old model).
    """
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def configure_serving_threads(threads: int) -> None:
    """Torch threads for serving, not training: ``threads`` intra-op (a micro-batch is a
    few rows: more threads only add wake-ups), one inter-op."""
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already ran: keep it
        pass


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port).

    Raises:
        DataError: the address cannot be bound (in use, not local, no permission).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DataError(
            expected=f"--host {host} --port {port} free to listen on",
            found=e.strerror or str(e),
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _require_web() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise DataError(
            expected="fastapi and uvicorn for serve (the Feast extra)",
            found=f"{e.name} is not installed",
            hint="pip install -r requirements/feast.txt",
        ) from None


def build_server(settings: ServeSettings) -> Tuple[uvicorn.Server, socket.socket, str]:
    """Load the model (and open the store), bind the socket, build the uvicorn server.

    Returns:
        Tuple[uvicorn.Server, socket.socket, str]: the server, its listening socket and
        its URL; ``server.run(sockets=[sock])`` serves until ``server.should_exit``.

    Raises:
        DataError: fastapi/uvicorn missing, a bad model folder, store or address.
    """
    settings.check()
    _require_web()
    import uvicorn

    configure_serving_threads(settings.threads)
    factory = None
    if settings.feast_repo is not None:
        from torchrec_ple.data.feast import open_store
        from torchrec_ple.serving.feast_online import feast_reader_factory

        store = open_store(settings.feast_repo)
        factory = feast_reader_factory(store, settings.feature_service, settings.fill)
    elif settings.feature_service is not None or settings.fill:
        raise DataError(
            expected="--feast-repo with --feature-service or --fill",
            found="no --feast-repo",
        )
    holder = ModelHolder(lambda: load_online_model(settings.model_dir, factory))
    sock = bind_socket(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    from torchrec_ple.serving.app import create_app

    config = uvicorn.Config(
        create_app(holder, settings, url),
        log_level="warning",
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )
    return uvicorn.Server(config), sock, url


def run_server(settings: ServeSettings) -> int:
    """Serve until SIGINT/SIGTERM (``torchrec-ple serve``); returns the exit code."""
    server, sock, _ = build_server(settings)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1
