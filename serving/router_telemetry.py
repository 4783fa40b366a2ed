"""What the router records per request: Prometheus metrics, the exposure log, the canary breaker.

Every request-level metric and exposure line carries the experiment, the assigned arm (what the
policy gave the user: the A/B's intent-to-treat arm), the served arm (who answered), the version
that answered and the fallback flag; so a canary failure answered by stable counts against the
canary's assigned arm, and per-assigned-arm counts keep the policy's ratio. Backend calls are
counted per arm that was tried (``crocodile_router_backend_calls_total``): a failing canary shows
its errors there even when every client got an answer. Arm labels come only from the policy
(stable, canary) or are the fixed word ``client`` (a client-chosen version, when the policy allows
it); domains not named in the policy share the label 'other': label cardinality stays bounded.

All of this runs off the request path: the request handler appends one record to a bounded queue
(a deque: no lock, no wake-up per request; when it holds ``queue_size`` records the handler waits,
it never drops) and one thread, waking every ``DRAIN_EVERY_S``, updates metrics, feeds the canary
breaker and appends the exposure lines of everything queued, then flushes the file. Waking per
record instead cost a thread switch per request, which on a busy 2-core host was most of the
router's overhead. ``close`` drains the queue, so a graceful stop loses no line.

The compiled data plane (native_router) sums its common requests' metrics itself and writes their
exposure lines to the same file: it hands over ``RequestCounts`` (deltas per label set) and
``CanaryCall`` (one canary outcome, for the breaker) instead of a record per request. So the file
is opened for appending and each drain's lines go out in one write: two writers never split a line.
"""
import collections
import json
import logging
import os
import threading
import time
from typing import Callable, NamedTuple, Optional, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("crocodile.serving.router")

# Seconds. Ranking budgets are tens of ms; the low buckets resolve the router's own overhead.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
REQUEST_LABELS = ["method", "experiment", "assigned_arm", "served_arm", "version", "fallback", "domain", "code"]
QUEUE_SIZE = 10000
DRAIN_EVERY_S = 0.01


class RequestCounts(NamedTuple):
    """Requests answered under one label set since the last delta: their number, the sum of their
    latencies in seconds and their count per latency bucket (LATENCY_BUCKETS, then +Inf)."""
    state: object
    method: str
    domain_label: str
    assigned_arm: str
    served_arm: str
    version: Optional[int]
    status: str
    requests: int
    seconds: float
    bucket_counts: Sequence[int]


class CanaryCall(NamedTuple):
    """One call to the canary (a request that did not fall back), for the breaker."""
    state: object
    failed: bool
    latency_ms: float


def observe_counts(child, bucket_counts: Sequence[int], seconds: float) -> None:
    """Adds ``sum(bucket_counts)`` observations to a Histogram child at once, as that many
    ``observe`` calls would: prometheus_client has no bulk observe, so this adds to the child's own
    per-bucket values (not cumulative; its last bucket is +Inf). Tested against ``observe``."""
    if len(bucket_counts) != len(child._buckets):
        raise ValueError(f"{len(bucket_counts)} bucket counts for a histogram of {len(child._buckets)} buckets")
    child._sum.inc(seconds)
    for bucket, count in zip(child._buckets, bucket_counts):
        if count:
            bucket.inc(count)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("crocodile_router_requests", "Requests answered", REQUEST_LABELS,
                                registry=self.registry)
        self.errors = Counter("crocodile_router_errors", "Requests answered with an error status", REQUEST_LABELS,
                              registry=self.registry)
        self.fallbacks = Counter("crocodile_router_fallbacks",
                                 "Requests assigned to the canary and answered by stable because the canary failed",
                                 ["experiment", "assigned_arm", "served_arm", "version", "fallback", "domain", "code"],
                                 registry=self.registry)
        self.backend_calls = Counter("crocodile_router_backend_calls",
                                     "Calls from the router to a backend, by the arm tried and the status",
                                     ["experiment", "arm", "code"], registry=self.registry)
        self.latency = Histogram("crocodile_router_request_latency_seconds",
                                 "Router request latency including the backend call(s)",
                                 REQUEST_LABELS[:-1], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.canary_aborted = Gauge("crocodile_router_canary_aborted",
                                    "1 while the canary breaker has stopped canary assignment",
                                    ["experiment"], registry=self.registry)

    def value(self, name: str, **labels) -> float:
        """A sample's current value (tests and the demo read counters through this)."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def total(self, name: str, **labels) -> float:
        """Sum of a metric's samples whose labels include ``labels`` (the others summed over)."""
        return sum(sample.value for family in self.registry.collect() for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


class Telemetry:
    """The one consumer of request records (see the module docstring).

    A record is a dict with the exposure fields plus private keys (starting with '_'):
    ``_state`` (the router state the request ran under: its policy and breaker), ``_domain_label``,
    ``_seconds``, ``_canary_call`` ((failed, latency_ms) or None), ``_canary_error`` (code name).
    """

    def __init__(self, metrics: RouterMetrics, exposure_log: Optional[str] = None,
                 on_abort: Optional[Callable[[object, str], None]] = None, queue_size: int = QUEUE_SIZE):
        self.metrics = metrics
        self.exposure_path = exposure_log
        self._fd = os.open(exposure_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if exposure_log else None
        self._lines = []  # this drain's exposure lines
        self._queue = collections.deque()
        self._queue_size = queue_size
        self._submitted = 0  # written by request threads under the GIL: += on an int attribute
        self._handled = 0
        self._submit_lock = threading.Lock()
        self._stop = threading.Event()
        self._on_abort = on_abort
        self._children = {}  # label tuple -> (requests, errors, latency) children: skips label lookups
        self.lines_written = 0
        self._thread = threading.Thread(target=self._run, name="router-telemetry", daemon=True)
        self._thread.start()

    def submit(self, record: dict) -> None:
        while len(self._queue) >= self._queue_size and self._thread.is_alive():
            time.sleep(DRAIN_EVERY_S / 10)  # full: wait for the writer rather than drop
        with self._submit_lock:
            self._submitted += 1
            self._queue.append(record)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Returns once every submitted record is counted and its line written and flushed."""
        target = self._submitted
        deadline = time.monotonic() + timeout_s
        while self._handled < target and time.monotonic() < deadline:
            time.sleep(DRAIN_EVERY_S / 5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()  # whatever arrived after the thread's last pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- the consumer thread -----------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(DRAIN_EVERY_S):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        handled = 0
        while self._queue:
            record = self._queue.popleft()
            try:
                self._handle(record)
            except Exception:  # a telemetry bug must not stop the thread (requests would block)
                log.exception("router telemetry failed on a record")
            handled += 1
        if handled:
            self._write_lines()
            self._handled += handled

    def _write_lines(self) -> None:
        data, self._lines = "".join(self._lines).encode(), []
        try:
            while data and self._fd is not None:
                data = data[os.write(self._fd, data):]
        except OSError:
            log.exception("router telemetry could not write the exposure log %s", self.exposure_path)

    def _children_for(self, labels: tuple):
        children = self._children.get(labels)
        if children is None:
            m = self.metrics
            children = self._children[labels] = (m.requests.labels(*labels), m.errors.labels(*labels),
                                                 m.latency.labels(*labels[:-1]))
        return children

    def _handle(self, record) -> None:
        if isinstance(record, RequestCounts):
            self._count(record)
        elif isinstance(record, CanaryCall):
            self._observe_canary(record.state, (record.failed, record.latency_ms))
        else:
            self._handle_record(record)

    def _count(self, counts: RequestCounts) -> None:
        experiment = counts.state.policy.experiment
        version = "none" if counts.version is None else str(counts.version)
        requests, errors, latency = self._children_for((
            counts.method, experiment, counts.assigned_arm, counts.served_arm, version, "false", counts.domain_label,
            counts.status))
        requests.inc(counts.requests)
        if counts.status != "OK":
            errors.inc(counts.requests)
        observe_counts(latency, counts.bucket_counts, counts.seconds)
        self.metrics.backend_calls.labels(experiment, counts.served_arm, counts.status).inc(counts.requests)
        if self.exposure_path:  # the data plane wrote their exposure lines
            self.lines_written += counts.requests

    def _observe_canary(self, state, canary_call) -> None:
        reason = state.breaker.observe(*canary_call)
        if reason is not None:
            experiment = state.policy.experiment
            self.metrics.canary_aborted.labels(experiment).set(1)
            log.error("canary aborted for experiment %s: %s; every user is assigned to stable until the "
                      "policy changes", experiment, reason)
            if self._on_abort is not None:
                self._on_abort(state, reason)

    def _handle_record(self, record: dict) -> None:
        state = record.pop("_state")
        domain = record.pop("_domain_label")
        seconds = record.pop("_seconds")
        canary_call = record.pop("_canary_call", None)
        canary_error = record.pop("_canary_error", None)
        experiment = record["experiment"]
        m = self.metrics
        version = str(record["version"]) if record["version"] is not None else "none"
        fallback = "true" if record["fallback"] else "false"
        children = self._children_for((record["method"], experiment, record["assigned_arm"] or "none",
                                       record["served_arm"] or "none", version, fallback, domain, record["status"]))
        children[0].inc()
        if record["status"] != "OK":
            children[1].inc()
        children[2].observe(seconds)
        if record["served_arm"] is not None:
            m.backend_calls.labels(experiment, record["served_arm"], record["status"]).inc()
        if canary_error is not None:
            m.backend_calls.labels(experiment, "canary", canary_error).inc()
        if record["fallback"]:
            m.fallbacks.labels(experiment, "canary", "stable", version, fallback, domain, canary_error).inc()
            log.warning("fallback: request %s (domain %s) assigned to canary, canary failed with %s; answered by "
                        "stable: %s", record["request_id"], record["domain"], canary_error, record["status"])
        if canary_call is not None:
            self._observe_canary(state, canary_call)
        if self._fd is not None:
            self._lines.append(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
            self.lines_written += 1
