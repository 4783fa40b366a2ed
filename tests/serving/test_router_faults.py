"""Faults under load, over real gRPC: overload answers RESOURCE_EXHAUSTED at once; the canary's model
server killed (SIGKILL, a separate `crocodile model-server` process) mid-load costs no client a
failed request, trips the breaker, and every fallback is in the logs; the only backend stopped and
restarted mid-load is reached again without restarting the router.

Counts are printed (pytest -s) for the serving note."""
import json
import logging
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from serving_test_data import CANARY_VERSION, STABLE_VERSION, candidates, free_port
from crocodile.serving.batching import BatchingOptions
from crocodile.serving.client import ScoringClient
from crocodile.serving.model_config import read_model_config
from crocodile.serving.model_server import build_server
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.server_core import ServerCore

CONTEXT = {"user_segment": "s", "user_region": "r"}


def run_load(port, clients, seconds, on_tick=None):
    """Clients call as fast as they can for ``seconds``; returns (ok count, [error codes])."""
    ok, errors = [0] * clients, []
    deadline = time.monotonic() + seconds

    def loop(index):
        with ScoringClient(f"127.0.0.1:{port}", timeout_s=30) as client:
            k = 0
            while time.monotonic() < deadline:
                try:
                    result = client.regress(k % 5, f"user-{index}-{k}", candidates(2), context=CONTEXT)
                    assert len(result.scores) == 2
                    ok[index] += 1
                except grpc.RpcError as error:
                    errors.append(error.code().name)
                k += 1
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    if on_tick is not None:
        on_tick()
    for thread in threads:
        thread.join()
    return sum(ok), errors


def test_overload_answers_resource_exhausted(start_model_server, start_router, config_path):
    # The backend holds every request ~1 s in its batching queue, so the first two stay in flight.
    slow = BatchingOptions(max_batch_size=512, batch_timeout_micros=1_000_000, num_batch_threads=1,
                           max_enqueued_batches=16)
    backend, _ = start_model_server(config_path, batching=slow)
    policy = CanaryPolicy.from_dict({"experiment": "overload", "salt": "s"})
    port, _ = start_router(backend, policy, max_concurrent_rpcs=2)
    barrier, outcomes = threading.Barrier(6), []

    def call(index):
        with ScoringClient(f"127.0.0.1:{port}", timeout_s=20) as client:
            barrier.wait()
            started = time.monotonic()
            try:
                client.regress(0, f"u{index}", candidates(1), context=CONTEXT)
                outcomes.append(("OK", time.monotonic() - started))
            except grpc.RpcError as error:
                outcomes.append((error.code().name, time.monotonic() - started))
    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(code for code, _ in outcomes)
    print(f"overload: 6 concurrent requests, max_concurrent_rpcs=2 -> {codes}")
    assert codes == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 4
    # Refused at once, not after queueing behind the 1 s batch.
    assert all(seconds < 0.5 for code, seconds in outcomes if code == "RESOURCE_EXHAUSTED")


@pytest.mark.slow
def test_canary_server_killed_mid_load(start_model_server, start_router, config_path, tmp_path, caplog):
    stable_port, _ = start_model_server(config_path)
    canary_port = free_port()
    canary_log = tmp_path / "canary.log"
    canary = subprocess.Popen([sys.executable, "-m", "crocodile", "model-server", "--port", str(canary_port),
                               "--model_config_file", config_path, "--allow_version_labels_for_unavailable_models"],
                              stdout=open(canary_log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "listening on port" not in canary_log.read_text() and time.monotonic() < deadline:
            assert canary.poll() is None, canary_log.read_text()[-2000:]
            time.sleep(0.2)
        with ScoringClient(f"127.0.0.1:{canary_port}", timeout_s=120) as warm:  # first calls trace the graph
            for _ in range(3):
                warm.regress(0, "warm-up", candidates(2), context=CONTEXT, label="canary")
        policy = CanaryPolicy.from_dict({"experiment": "kill", "salt": "s", "default_canary_share": 0.5,
                                         "canary_abort": {"max_error_rate": 0.2, "min_requests": 20,
                                                          "window_s": 60}})
        exposure = tmp_path / "exposure.jsonl"
        port, router = start_router(stable_port, policy, exposure_log=str(exposure),
                                    canary_backend=f"127.0.0.1:{canary_port}")

        def kill_after_a_while():
            time.sleep(2.0)
            canary.send_signal(signal.SIGKILL)
        with caplog.at_level(logging.WARNING):
            ok, errors = run_load(port, clients=6, seconds=6.0, on_tick=kill_after_a_while)
            router.flush()
    finally:
        if canary.poll() is None:
            canary.kill()
        canary.wait(30)
    lines = [json.loads(line) for line in exposure.read_text().splitlines()]
    fallbacks = [line for line in lines if line["fallback"]]
    served_by_canary = sum(line["served_arm"] == "canary" for line in lines)
    logged_fallbacks = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fallback: request")]
    print(f"canary killed: {ok} answered, {len(errors)} failed, {served_by_canary} served by the canary before the "
          f"kill, {len(fallbacks)} fallbacks, aborted: {router.canary_aborted}")
    assert errors == [] and ok == len(lines) and all(line["status"] == "OK" for line in lines)
    assert served_by_canary > 0 and all(line["version"] == CANARY_VERSION for line in lines
                                        if line["served_arm"] == "canary")
    assert len(fallbacks) > 0 and all(line["version"] == STABLE_VERSION and line["canary_error"]
                                        for line in fallbacks)
    assert router.canary_aborted is not None and "max_error_rate 0.2" in router.canary_aborted
    # Every fallback is in the exposure log and the router's log, each with its request id.
    assert sorted(m.split()[2] for m in logged_fallbacks) == sorted(line["request_id"] for line in fallbacks)
    # After the abort, canary-hashed users are assigned to stable: the fallbacks stop.
    last_fallback = max(line["time"] for line in fallbacks)
    assert any(line["time"] > last_fallback and line["assigned_arm"] == "stable"
               and policy.arm_for(line["domain"], line["user"]) == "canary" for line in lines)


@pytest.mark.slow
def test_backend_restarted_mid_load(start_router, config_path):
    core = ServerCore(allow_version_labels_for_unavailable_models=True)
    core.reload_config(read_model_config(config_path))
    backend_port = free_port()
    server, _, _ = build_server(core, backend_port, host="127.0.0.1")
    server.start()
    policy = CanaryPolicy.from_dict({"experiment": "restart", "salt": "s", "default_canary_share": 0.5})
    port, router = start_router(backend_port, policy, backend_timeout_s=5.0)
    restarted = []

    def restart():
        time.sleep(1.5)
        server.stop(0).wait()  # connections reset, in-flight calls cancelled
        time.sleep(1.0)  # the port refuses connections meanwhile
        again, _, _ = build_server(core, backend_port, host="127.0.0.1")
        again.start()
        restarted.append((again, time.time()))
    try:
        ok, errors = run_load(port, clients=4, seconds=6.0, on_tick=restart)
        router.flush()
        with ScoringClient(f"127.0.0.1:{port}") as client:  # the same router, no restart
            result = client.regress(1, "after", candidates(1), context=CONTEXT)
            assert result.version in (STABLE_VERSION, CANARY_VERSION)
    finally:
        for again, _ in restarted:
            again.stop(0).wait()
        core.stop()
    print(f"backend restarted: {ok} answered, {len(errors)} failed ({sorted(set(errors))})")
    assert restarted and ok > 0
    # Stable calls wait for the reconnection (bounded by the deadline); canary calls fail over to it.
    assert set(errors) <= {"UNAVAILABLE", "CANCELLED"}
