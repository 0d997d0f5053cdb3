"""Micro-batching: concurrent ``/score`` requests scored together, on the event loop.

A checked request joins the pending batch; the batch is scored ``wait_us`` microseconds
after its first request, or at once when it holds ``max_batch_rows`` rows, with one store
read and one model call (entity requests and raw-value requests form separate groups).
Each request gets its own slice of the scores back, in its own row order.

A request that finds the server quiet is scored at once: when requests have been coming
further apart than ``wait_us`` (a moving average of the gaps between arrivals), waiting
would most likely gather no other request, only add ``wait_us`` to a lone client's
latency.

Scoring runs on the event loop's thread, between reading requests. Reading Feast, the
transforms and the program's ~100 small ATen calls are GIL-bound: on a second thread each
call that releases the GIL would wait for the loop's thread to hand it back (up to the
5 ms switch interval), so a worker thread makes a batch slower, not parallel. Requests
arriving meanwhile wait in the socket buffers and form the next batch.

The model is looked up once per batch (``current()``), so a reload swapping it never
changes the model under a batch being scored. A batch that fails is scored again request
by request, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional

import numpy as np

from torchrec_ple.serving.online import BatchScores, OnlineModel, StageTimes
from torchrec_ple.serving.score_request import ENTITIES, ScoreRequest

logger = logging.getLogger("torchrec_ple")

BatchHook = Callable[[str, BatchScores, int], None]


@dataclass
class Scored:
    """One request's scores and how they were made.

    Args:
        scores (np.ndarray): (n, K) float32, the request's rows in order.
        tasks (List[str]): the K task names.
        version (str): the model version that scored them.
        times (StageTimes): the batch's seconds per stage.
        queue_s (float): seconds the request waited before its batch started.
        batch_rows (int): rows in the batch it was scored in.
    """

    scores: np.ndarray
    tasks: List[str]
    version: str
    times: StageTimes
    queue_s: float
    batch_rows: int


class QueueFull(Exception):
    """More requests wait than the batcher queues."""


@dataclass
class _Item:
    request: ScoreRequest
    future: asyncio.Future[Scored]
    enqueued: float


class MicroBatcher:
    """Scores pending requests in batches on the running event loop.

    Args:
        current (Callable[[], OnlineModel]): the model to score the next batch with.
        max_batch_rows (int): a batch is scored once it holds this many rows (a larger
            request is scored alone). Default: 256.
        wait_us (int): a batch is scored this long after its first request (at once when
            requests come further apart than that); 0: as soon as the requests already read
            are queued. Default: 1000.
        max_queue (int): requests that may wait; more are refused (:class:`QueueFull`).
            Default: 1024.
        on_batch (Optional[BatchHook]): called with (kind, scores, requests) per group
            scored (metrics).

    Example::

        batcher = MicroBatcher(lambda: model, max_batch_rows=64, wait_us=500)
        scored = await batcher.score(request)  # Scored: (n, K) scores, version, times
    """

    def __init__(
        self,
        current: Callable[[], OnlineModel],
        max_batch_rows: int = 256,
        wait_us: int = 1000,
        max_queue: int = 1024,
        on_batch: Optional[BatchHook] = None,
    ) -> None:
        self._current = current
        self._max_rows = max(1, max_batch_rows)
        self._wait_s = max(0, wait_us) / 1e6
        self._max_queue = max(1, max_queue)
        self._on_batch = on_batch
        self._pending: Deque[_Item] = deque()
        self._rows = 0
        self._timer: Optional[asyncio.Handle] = None
        self._last_arrival: Optional[float] = None
        self._gap_s: Optional[float] = None  # moving average of the gaps between arrivals

    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._pending)

    async def score(self, request: ScoreRequest) -> Scored:
        """The request's scores, once its batch is scored (or its exception).

        Raises:
            QueueFull: ``max_queue`` requests already wait.
        """
        if len(self._pending) >= self._max_queue:
            raise QueueFull(f"{self._max_queue} requests already wait")
        loop = asyncio.get_running_loop()
        item = _Item(request, loop.create_future(), time.perf_counter())
        quiet = self._arrived(item.enqueued) and not self._pending
        self._pending.append(item)
        self._rows += len(request.rows)
        if self._rows >= self._max_rows or self._wait_s == 0 or quiet:
            self._schedule(loop, 0.0)
        elif self._timer is None:
            self._schedule(loop, self._wait_s)
        return await item.future

    def _arrived(self, now: float) -> bool:
        """Record an arrival; whether requests have been coming further apart than the
        wait (then a new batch is scored at once: no other request is likely to join)."""
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap_s = gap if self._gap_s is None else 0.9 * self._gap_s + 0.1 * gap
        self._last_arrival = now
        return self._gap_s is None or self._gap_s > self._wait_s

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._timer is not None:
            if delay > 0:
                return
            self._timer.cancel()
        if delay > 0:
            self._timer = loop.call_later(delay, self.flush)
        else:
            self._timer = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Score the next batch of pending requests (up to ``max_batch_rows`` rows) now.

        More pending requests are scored by the next call, scheduled at once: in between,
        the loop sends this batch's answers and reads new requests.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch: List[_Item] = []
        rows = 0
        while self._pending and (not batch or rows < self._max_rows):
            item = self._pending[0]
            n = len(item.request.rows)
            if batch and rows + n > self._max_rows:
                break
            self._pending.popleft()
            self._rows -= n
            if not item.future.done():  # done: cancelled, the client went away
                batch.append(item)
                rows += n
        if self._pending:
            self._timer = asyncio.get_running_loop().call_soon(self.flush)
        if batch:
            self._score(batch)

    def drain(self) -> None:
        """Score every pending request (at shutdown)."""
        while self._pending:
            self.flush()

    def _score(self, items: List[_Item]) -> None:
        model = self._current()  # one model per batch, whatever a reload does meanwhile
        groups: Dict[str, List[_Item]] = {}
        for item in items:
            groups.setdefault(item.request.kind, []).append(item)
        for kind, group in groups.items():
            try:
                self._score_group(model, kind, group)
            except Exception as e:  # one request's bad value must not fail the others
                if len(group) == 1:
                    _fail(group[0], e)
                    continue
                for item in group:
                    if item.future.done():
                        continue
                    try:
                        self._score_group(model, kind, [item])
                    except Exception as item_error:
                        _fail(item, item_error)

    def _score_group(self, model: OnlineModel, kind: str, group: List[_Item]) -> None:
        rows = [r for item in group for r in item.request.rows]
        started = time.perf_counter()
        out = model.score_entities(rows) if kind == ENTITIES else model.score_rows(rows)
        start = 0
        for item in group:
            n = len(item.request.rows)
            scored = Scored(
                out.scores[start : start + n],
                model.task_names,
                model.version,
                out.times,
                started - item.enqueued,
                len(rows),
            )
            if not item.future.done():
                item.future.set_result(scored)
            start += n
        if self._on_batch is not None:
            try:
                self._on_batch(kind, out, len(group))
            except Exception:  # metrics must never fail a scored request
                logger.exception("serving metrics hook failed")


def _fail(item: _Item, error: BaseException) -> None:
    if not item.future.done():
        item.future.set_exception(error)
