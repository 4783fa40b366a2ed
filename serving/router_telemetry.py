"""What the router records per request: Prometheus metrics and the exposure log.

Metrics are per arm and domain (TF Serving's own metrics carry the model name only, so the
stable/canary comparison needs these). Domains not named in the policy share the label
'other', which keeps label cardinality bounded whatever ids clients send.
The exposure log is one JSON object per line per request, written and flushed under a lock,
so a line is complete on disk once the client has its answer.
"""
import json
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

# Seconds. Ranking budgets are tens of ms; the low buckets resolve the router's own overhead.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("crocodile_router_requests", "Requests answered, by arm and domain",
                                ["method", "arm", "domain", "code"], registry=self.registry)
        self.errors = Counter("crocodile_router_errors", "Requests answered with an error status",
                              ["method", "arm", "domain", "code"], registry=self.registry)
        self.fallbacks = Counter("crocodile_router_fallbacks",
                                 "Canary requests answered by stable because the canary failed",
                                 ["domain", "code"], registry=self.registry)
        self.latency = Histogram("crocodile_router_request_latency_seconds",
                                 "Router request latency including the backend call",
                                 ["method", "arm", "domain"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def record(self, method: str, arm: str, domain: str, code: str, seconds: float) -> None:
        self.requests.labels(method, arm, domain, code).inc()
        if code != "OK":
            self.errors.labels(method, arm, domain, code).inc()
        self.latency.labels(method, arm, domain).observe(seconds)

    def value(self, name: str, **labels) -> float:
        """A sample's current value (tests and the demo read counters through this)."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


class ExposureLog:
    """Append-only JSON lines; ``write`` returns once the line is flushed."""

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()
        self.lines_written = 0

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line)
            self._file.flush()
            self.lines_written += 1

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
                self._file.close()
