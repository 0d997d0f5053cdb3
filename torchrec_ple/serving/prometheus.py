"""``GET /metrics`` of ``torchrec-ple serve``: Prometheus counters and histograms.

One registry per server (not the process-wide default), with in-process values, so
several servers in one process (tests) count apart. Feast's import sets
``PROMETHEUS_MULTIPROC_DIR``, which switches prometheus_client to values in per-process
files shared by every metric of one name and labels in the process: two servers (or a
reloaded model's old and new ``model_info``) would then add up; ours are created as plain
in-process values whatever that variable says. Names start with ``torchrec_ple_``:

* ``requests_total{endpoint,status}``, ``request_errors_total{endpoint,status}`` (4xx, 5xx),
  ``request_seconds{endpoint}`` (latency histogram, as the server measures it);
* ``stage_seconds{stage}``: per scored batch, ``feature_read`` (online store),
  ``transforms``, ``model``, and ``queue`` (per request: wait before its batch);
* ``batch_rows``, ``rows_scored_total{source}`` (``entities`` or ``features``);
* ``unknown_entities_total``: entity rows the store had no feature value for (scored with
  the fills); ``rows_filled_total{feature,reason}``: values the transforms filled or
  mapped out of vocabulary (as ``predict`` reports them), and store nulls the server's
  ``--fill`` replaced (``reason="fill"``);
* ``reloads_total{result}``, ``model_info{version}``, ``queued_requests``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Iterator, Tuple

from torchrec_ple.serving.online import BatchScores

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Encoding report counts -> the reason label (see FeatureTransforms.encode).
REPORT_REASONS = {
    "missing": "missing",
    "out_of_vocabulary": "out_of_vocabulary",
    "out_of_range": "out_of_range",
    "missing_or_nonfinite_filled": "filled",
    "clipped": "clipped",
    "empty_lists": "empty_list",
}


@contextlib.contextmanager
def _in_process_values() -> Iterator[None]:
    """Metrics (and labelled children) created inside hold plain in-process values."""
    from prometheus_client import values

    saved = values.ValueClass
    values.ValueClass = values.MutexValue
    try:
        yield
    finally:
        values.ValueClass = saved


class ServeMetrics:
    """The server's Prometheus metrics.

    Args:
        queued (Callable[[], int]): how many requests wait for a batch now.

    Example::

        metrics = ServeMetrics(lambda: 0)
        metrics.request("/score", 200, 0.004)
        text, content_type = metrics.render()
    """

    def __init__(self, queued: Callable[[], int]) -> None:
        with _in_process_values():
            self._create(queued)
        self._children: Dict[Tuple[str, ...], Any] = {}

    def _create(self, queued: Callable[[], int]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = CollectorRegistry()
        p = "torchrec_ple_"
        self._registry = r
        self._requests = Counter(
            p + "requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self._errors = Counter(
            p + "request_errors",
            "Refused (4xx) or failed (5xx) requests",
            ["endpoint", "status"],
            registry=r,
        )
        self._latency = Histogram(
            p + "request_seconds",
            "Request latency in the server",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._stage = Histogram(
            p + "stage_seconds",
            "Seconds per scoring stage (feature_read, transforms, model: per batch; queue: "
            "per request)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_rows = Histogram(
            p + "batch_rows", "Rows per scored batch", buckets=BATCH_BUCKETS, registry=r
        )
        self._rows = Counter(p + "rows_scored", "Rows scored", ["source"], registry=r)
        self._unknown = Counter(
            p + "unknown_entities",
            "Entity rows without any feature value in the online store (scored with fills)",
            registry=r,
        )
        self._filled = Counter(
            p + "rows_filled",
            "Values filled or mapped at serving time, by feature and reason",
            ["feature", "reason"],
            registry=r,
        )
        self._reloads = Counter(p + "reloads", "Model reloads", ["result"], registry=r)
        self._info = Gauge(p + "model_info", "The served model (1)", ["version"], registry=r)
        gauge = Gauge(p + "queued_requests", "Requests waiting for a batch", registry=r)
        gauge.set_function(lambda: float(queued()))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)),) + labels
        child = self._children.get(key)
        if child is None:
            with _in_process_values():
                child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        code = str(status)
        self._child(self._requests, endpoint, code).inc()
        if status >= 400:
            self._child(self._errors, endpoint, code).inc()
        self._child(self._latency, endpoint).observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._child(self._stage, "queue").observe(seconds)

    def batch(self, kind: str, out: BatchScores, requests: int) -> None:
        """Count one scored group of requests (the batcher's hook)."""
        rows = int(out.scores.shape[0])
        self._batch_rows.observe(rows)
        self._child(self._rows, kind).inc(rows)
        t = out.times
        if kind == "entities":
            self._child(self._stage, "feature_read").observe(t.feature_read)
        self._child(self._stage, "transforms").observe(t.transforms)
        self._child(self._stage, "model").observe(t.model)
        if out.unknown:
            self._unknown.inc(out.unknown)
        for column, n in out.filled.items():
            self._child(self._filled, column, "fill").inc(n)
        for feature, rep in out.report.get("features", {}).items():
            for key, reason in REPORT_REASONS.items():
                n = rep.get(key)
                if n:
                    self._child(self._filled, feature, reason).inc(n)

    def reload(self, ok: bool, old: str, new: str) -> None:
        self._child(self._reloads, "ok" if ok else "failed").inc()
        if ok:
            self.serving(new, old)

    def serving(self, version: str, previous: str = "") -> None:
        """Mark ``version`` as the served model."""
        if previous and previous != version:
            self._children.pop((str(id(self._info)), previous), None)
            with warnings.catch_warnings():
                # prometheus_client warns under PROMETHEUS_MULTIPROC_DIR; our values are
                # in-process (see _in_process_values), where removing a label works
                warnings.filterwarnings("ignore", "Removal of labels", UserWarning)
                try:
                    self._info.remove(previous)
                except KeyError:
                    pass
        self._child(self._info, version).set(1)

    def render(self) -> Tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self._registry), CONTENT_TYPE_LATEST
