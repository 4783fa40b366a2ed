"""The router's telemetry: deltas summed elsewhere count as the requests would, and two writers
share the exposure log without splitting a line.

The compiled data plane sums its requests' metrics and hands over ``RequestCounts``; these tests
check by hand that they land where per-request records would (test_native_router compares the
two routers end to end).
"""
import json
import os
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from crocodile.serving.canary_breaker import CanaryBreaker
from crocodile.serving.policy import CanaryAbort, CanaryPolicy
from crocodile.serving.router import RouterState
from crocodile.serving.router_telemetry import (LATENCY_BUCKETS, CanaryCall, RequestCounts, RouterMetrics, Telemetry,
                                                observe_counts)

POLICY = CanaryPolicy.from_dict({"experiment": "exp", "salt": "s", "default_canary_share": 0.5, "domains": {1: 0.2}})


def _samples(registry):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def test_observe_counts_is_many_observes():
    seconds = [0.0003, 0.0005, 0.0007, 0.003, 0.003, 2.5, 7.0]  # 0.0005 and 2.5 sit on bounds; 7.0 is +Inf
    one_by_one, summed = CollectorRegistry(), CollectorRegistry()
    observed = Histogram("h", "h", ["k"], buckets=LATENCY_BUCKETS, registry=one_by_one).labels("x")
    for value in seconds:
        observed.observe(value)
    # By hand: buckets <=0.0005: 2, <=0.001: 1, <=0.005: 2, <=2.5: 1, +Inf: 1.
    counts = [2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert len(counts) == len(LATENCY_BUCKETS) + 1
    observe_counts(Histogram("h", "h", ["k"], buckets=LATENCY_BUCKETS, registry=summed).labels("x"), counts,
                   sum(seconds))
    assert _samples(summed) == _samples(one_by_one)
    assert _samples(summed)[("h_bucket", (("k", "x"), ("le", "0.005")))] == 5.0


def test_observe_counts_refuses_a_bucket_count_of_another_histogram():
    child = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    with pytest.raises(ValueError, match="12 bucket counts for a histogram of 13 buckets"):
        observe_counts(child, [0] * 12, 0.0)


def test_request_counts_and_canary_calls_count_as_records(tmp_path):
    state = RouterState(POLICY, CanaryBreaker(CanaryAbort(max_error_rate=0.5, min_requests=4)), "given")
    aborted = []
    metrics = RouterMetrics()
    telemetry = Telemetry(metrics, exposure_log=str(tmp_path / "exposure.jsonl"),
                          on_abort=lambda s, reason: aborted.append(reason))
    buckets = [0] * (len(LATENCY_BUCKETS) + 1)
    buckets[2] = 3  # three requests of 1-2 ms
    telemetry.submit(RequestCounts(state, "Regress", "1", "stable", "stable", 2, "OK", 3, 0.0045, buckets))
    telemetry.submit(RequestCounts(state, "Predict", "other", "canary", "canary", None, "INVALID_ARGUMENT", 2,
                                   0.002, [2] + [0] * len(LATENCY_BUCKETS)))
    for failed in (True, True, True, False):  # 3 of 4 canary calls failed: > 0.5
        telemetry.submit(CanaryCall(state, failed, 1.0))
    telemetry.flush()
    labels = dict(method="Regress", experiment="exp", assigned_arm="stable", served_arm="stable", version="2",
                  fallback="false", domain="1")
    assert metrics.value("crocodile_router_requests_total", **labels, code="OK") == 3
    assert metrics.value("crocodile_router_request_latency_seconds_bucket", **labels, le="0.002") == 3
    assert metrics.value("crocodile_router_request_latency_seconds_bucket", **labels, le="0.001") == 0
    assert metrics.value("crocodile_router_request_latency_seconds_sum", **labels) == pytest.approx(0.0045)
    assert metrics.value("crocodile_router_errors_total", **labels, code="OK") == 0
    canary = dict(method="Predict", experiment="exp", assigned_arm="canary", served_arm="canary", version="none",
                  fallback="false", domain="other", code="INVALID_ARGUMENT")
    assert metrics.value("crocodile_router_errors_total", **canary) == 2
    assert metrics.value("crocodile_router_backend_calls_total", experiment="exp", arm="stable", code="OK") == 3
    assert metrics.value("crocodile_router_backend_calls_total", experiment="exp", arm="canary",
                         code="INVALID_ARGUMENT") == 2
    assert telemetry.lines_written == 5  # the data plane wrote them; the file holds none of Python's
    assert state.breaker.tripped and aborted == [state.breaker.tripped]
    assert metrics.value("crocodile_router_canary_aborted", experiment="exp") == 1
    telemetry.close()


OTHER_WRITER = """
import json, os, sys, threading, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
line = (json.dumps({"writer": "other", "pad": "y" * 300}) + "\\n").encode()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set():
    os.write(fd, line * 7)
    time.sleep(0.0002)
"""


def test_two_writers_never_split_a_line(tmp_path):
    """The data plane appends to the exposure log while the telemetry does: each drain is one
    append of whole lines, so a line of one never lands inside a line of the other (a line
    written in more than one piece would be split)."""
    path = str(tmp_path / "exposure.jsonl")
    telemetry = Telemetry(RouterMetrics(), exposure_log=path)
    state = RouterState(POLICY, CanaryBreaker(None), "given")
    # Another process, as the data plane is: writes of 7 lines while the telemetry drains.
    other = subprocess.Popen([sys.executable, "-c", OTHER_WRITER, path], stdin=subprocess.PIPE)
    try:
        while os.path.getsize(path) == 0:
            time.sleep(0.01)
        for batch in range(20):
            for k in range(200):  # ~60 KB per drain
                telemetry.submit({"time": 0.0, "request_id": f"{batch}-{k}", "method": "Regress", "experiment": "exp",
                                  "user": "u" * 200, "domain": 1, "assigned_arm": "stable", "served_arm": "stable",
                                  "arm": "stable", "version": 1, "fallback": False, "status": "OK", "latency_ms": 1.0,
                                  "_state": state, "_seconds": 0.001, "_domain_label": "1", "_canary_call": None})
            telemetry.flush()
    finally:
        other.stdin.close()  # its signal to stop
        other.wait(10)
        telemetry.close()
    lines = [json.loads(line) for line in open(path)]  # every line whole
    assert sum("request_id" in line for line in lines) == 4000
    assert sum(line.get("writer") == "other" for line in lines) > 0
