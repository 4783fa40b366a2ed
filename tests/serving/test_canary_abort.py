"""The canary's circuit breaker: the window arithmetic by hand, and over real gRPC servers the
router stops assigning users to a failing or slow canary, says so in a metric, a log line and
its health detail, and resumes only when the policy changes."""
import json
import logging
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving_test_data import CANARY_VERSION, MODEL_NAME, STABLE_VERSION, candidates
from crocodile.errors import UserError
from crocodile.serving.batching import BatchingOptions
from crocodile.serving.canary_breaker import CanaryBreaker, nearest_rank_p99
from crocodile.serving.client import ScoringClient
from crocodile.serving.model_config import build_model_config, format_model_config
from crocodile.serving.policy import CanaryAbort, CanaryPolicy
from crocodile.serving.router import CANARY_HEALTH_SERVICE, HEALTH_DETAIL_HEADER

CONTEXT = {"user_segment": "s", "user_region": "r"}
POLICY_YAML = """experiment: abort-test
salt: s
default_canary_share: 0.5
on_canary_failure: fallback
canary_abort: {max_error_rate: 0.5, min_requests: 6, window_s: 60}
"""


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_breaker_window_by_hand():
    clock = Clock()
    breaker = CanaryBreaker(CanaryAbort(max_error_rate=0.25, min_requests=4, window_s=10), clock=clock)
    for failed in (True, True, False):  # 2/3 failed but fewer than min_requests calls: no trip
        assert breaker.observe(failed, 1.0) is None
    clock.now = 11.0  # the three calls leave the window
    for failed in (False, False, False, True):  # 1/4 = 0.25, not > 0.25
        assert breaker.observe(failed, 1.0) is None
    reason = breaker.observe(True, 1.0)  # 2/5 = 0.4 > 0.25
    assert reason.startswith("canary error rate 2/5 = 0.400 > max_error_rate 0.25")
    assert breaker.tripped == reason and breaker.observe(False, 1.0) is None  # stays tripped


def test_breaker_p99_by_hand():
    assert nearest_rank_p99(list(range(1, 101))) == 99 and nearest_rank_p99([5.0]) == 5.0
    assert nearest_rank_p99(list(range(1, 201))) == 198
    breaker = CanaryBreaker(CanaryAbort(max_p99_ms=50, min_requests=100, window_s=60), clock=Clock())
    for k in range(99):
        assert breaker.observe(False, 10.0 if k else 80.0) is None  # 99 calls: below min_requests
    # 100 calls, one at 80 ms: the nearest-rank p99 is 10 ms.
    assert breaker.observe(False, 10.0) is None
    breaker._next_p99 = 0.0
    assert "p99 latency 80.0 ms > max_p99_ms 50" in breaker.observe(False, 90.0)  # 2 of 101 above: p99 = 80


@pytest.mark.parametrize("abort, key", [({"max_error_rate": 2}, "max_error_rate"), ({}, "canary_abort"),
                                        ({"max_p99_ms": -1}, "max_p99_ms"), ({"max_error_rate": 0.1, "x": 1},
                                                                            "canary_abort.x"),
                                        ({"max_error_rate": 0.1, "min_requests": 0.5}, "min_requests")])
def test_abort_validation_names_the_key(abort, key):
    with pytest.raises(UserError, match=key):
        CanaryPolicy.from_dict({"experiment": "e", "salt": "s", "canary_abort": abort})


def canary_users(policy, count, domain=1):
    return [u for u in (f"c{k}" for k in range(400)) if policy.arm_for(domain, u) == "canary"][:count]


def health_check(port, service):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(service=service))
        return response.status, json.loads(dict(call.trailing_metadata())[HEALTH_DETAIL_HEADER])


def test_failing_canary_is_aborted_until_the_policy_changes(start_model_server, start_router, tmp_path, model_base,
                                                           caplog):
    # The canary label points at a version that is not loaded: every canary call answers NOT_FOUND.
    config = build_model_config(MODEL_NAME, model_base, [STABLE_VERSION, 7], {"stable": STABLE_VERSION, "canary": 7})
    (tmp_path / "config.pbtxt").write_text(format_model_config(config))
    backend, _ = start_model_server(str(tmp_path / "config.pbtxt"))
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY_YAML)
    policy = CanaryPolicy.load(str(policy_path))
    port, router = start_router(backend, policy, exposure_log=str(tmp_path / "exposure.jsonl"),
                                policy_path=str(policy_path), health_interval_s=0.2)
    client = ScoringClient(f"127.0.0.1:{port}")
    users = canary_users(policy, 10)
    with caplog.at_level(logging.WARNING):
        for user in users[:6]:  # 6 canary failures, all answered by stable
            assert client.regress(1, user, candidates(2), context=CONTEXT).arm == "stable"
        router.flush()
        assert router.canary_aborted.startswith("canary error rate 6/6 = 1.000 > max_error_rate 0.5")
        for user in users[6:]:  # assigned to stable now: no canary call, no fallback
            assert client.regress(1, user, candidates(2), context=CONTEXT).arm == "stable"
        router.flush()
    lines = [json.loads(line) for line in open(tmp_path / "exposure.jsonl")]
    assert [(l["assigned_arm"], l["served_arm"], l["fallback"]) for l in lines] == \
        [("canary", "stable", True)] * 6 + [("stable", "stable", False)] * 4
    assert router.metrics.value("crocodile_router_canary_aborted", experiment="abort-test") == 1
    assert router.metrics.value("crocodile_router_backend_calls_total", experiment="abort-test", arm="canary",
                                code="NOT_FOUND") == 6
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fallback: request" in m for m in messages) == 6
    assert any(m.startswith("canary aborted for experiment abort-test") for m in messages)
    deadline = time.monotonic() + 5  # the abort refreshes health at once
    while health_check(port, CANARY_HEALTH_SERVICE)[1]["canary_aborted"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    canary_status, detail = health_check(port, CANARY_HEALTH_SERVICE)
    assert canary_status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert detail["canary_aborted"].startswith("canary error rate")
    # The same file again: still aborted. A changed policy: canary assignment resumes.
    assert router.reload_policy() is False and router.canary_aborted is not None
    policy_path.write_text(POLICY_YAML.replace("window_s: 60", "window_s: 30"))
    assert router.reload_policy() is True and router.canary_aborted is None
    assert router.metrics.value("crocodile_router_canary_aborted", experiment="abort-test") == 0
    client.regress(1, users[0], candidates(1), context=CONTEXT)
    router.flush()
    assert json.loads(open(tmp_path / "exposure.jsonl").readlines()[-1])["assigned_arm"] == "canary"
    client.close()


def test_slow_canary_is_aborted_on_p99(start_model_server, start_router, config_path):
    stable_port, _ = start_model_server(config_path)
    # The canary's server holds every request up to 150 ms in its batching queue.
    slow = BatchingOptions(max_batch_size=512, batch_timeout_micros=150_000, num_batch_threads=1,
                           max_enqueued_batches=64)
    canary_port, _ = start_model_server(config_path, batching=slow)
    policy = CanaryPolicy.from_dict({"experiment": "slow", "salt": "s", "default_canary_share": 0.5,
                                     "canary_abort": {"max_p99_ms": 100, "min_requests": 3, "window_s": 60}})
    port, router = start_router(stable_port, policy, canary_backend=f"127.0.0.1:{canary_port}")
    client = ScoringClient(f"127.0.0.1:{port}")
    users = canary_users(policy, 5)
    for user in users[:3]:
        result = client.regress(1, user, candidates(1), context=CONTEXT)
        assert (result.arm, result.version) == ("canary", CANARY_VERSION)  # slow but answered
    router.flush()
    assert "p99 latency" in router.canary_aborted and "> max_p99_ms 100" in router.canary_aborted
    assert client.regress(1, users[3], candidates(1), context=CONTEXT).arm == "stable"
    client.close()
