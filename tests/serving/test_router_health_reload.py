"""grpc.health.v1 on the router (SERVING only when the backend answers and both labels resolve) and
policy reload: on a file change, on SIGHUP (the real `crocodile router` process), atomic, and a bad
file keeps the old policy with the reason in the log."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving_test_data import MODEL_NAME, STABLE_VERSION, candidates, free_port
from crocodile.serving.client import ScoringClient
from crocodile.serving.model_config import build_model_config, format_model_config
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.policy_watch import PolicyWatcher
from crocodile.serving.router import CANARY_HEALTH_SERVICE, HEALTH_DETAIL_HEADER, SERVICE

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
POLICY_YAML = "experiment: reload\nsalt: s\ndefault_canary_share: 0.0\n"


def check(port, service=""):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
            health_pb2.HealthCheckRequest(service=service), timeout=5)
        return response.status, json.loads(dict(call.trailing_metadata())[HEALTH_DETAIL_HEADER])


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def replace_file(path, text):
    """Writes as an operator or a ConfigMap update does: a new file renamed over the old one."""
    (path.parent / (path.name + ".new")).write_text(text)
    os.replace(path.parent / (path.name + ".new"), path)


def test_health_follows_backend_and_labels(start_model_server, start_router, config_path, tmp_path, model_base):
    backend, _ = start_model_server(config_path)
    policy = CanaryPolicy.from_dict({"experiment": "h", "salt": "s"})
    port, _ = start_router(backend, policy, health_interval_s=0.1)
    assert wait_for(lambda: check(port)[0] == SERVING)
    status, detail = check(port, SERVICE)
    assert status == SERVING and detail["labels"] == {"stable": "version 1", "canary": "version 2"}
    assert check(port, CANARY_HEALTH_SERVICE)[0] == SERVING
    # A backend without the canary label: the router is NOT_SERVING and says which label failed.
    config = build_model_config(MODEL_NAME, model_base, [STABLE_VERSION], {"stable": STABLE_VERSION})
    (tmp_path / "stable_only.pbtxt").write_text(format_model_config(config))
    stable_only, _ = start_model_server(str(tmp_path / "stable_only.pbtxt"))
    port, _ = start_router(stable_only, policy, health_interval_s=0.1)
    assert wait_for(lambda: check(port)[1]["labels"].get("canary", "").startswith("INVALID_ARGUMENT"))
    assert check(port)[0] == NOT_SERVING and check(port, CANARY_HEALTH_SERVICE)[0] == NOT_SERVING
    assert check(port)[1]["labels"]["stable"] == "version 1"
    # No backend at all.
    port, _ = start_router(free_port(), policy, health_interval_s=0.1)
    assert wait_for(lambda: check(port)[1]["labels"].get("stable", "").startswith("UNAVAILABLE"))
    assert check(port)[0] == NOT_SERVING


def test_file_change_reloads_atomically_and_bad_file_keeps_old(start_model_server, start_router, config_path,
                                                               tmp_path, caplog):
    backend, _ = start_model_server(config_path)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    port, router = start_router(backend, CanaryPolicy.load(str(path)), policy_path=str(path))
    watcher = PolicyWatcher(router, str(path), poll_s=0.05).start()
    client = ScoringClient(f"127.0.0.1:{port}")
    try:
        assert client.regress(1, "u1", candidates(1), context={"user_segment": "s", "user_region": "r"}).arm == "stable"
        with caplog.at_level(logging.INFO):
            replace_file(path, POLICY_YAML.replace("0.0", "1.0"))
            assert wait_for(lambda: router.policy.default_canary_share == 1.0)
            assert client.regress(1, "u1", candidates(1), context={"user_segment": "s", "user_region": "r"}).arm \
                == "canary"
            replace_file(path, POLICY_YAML.replace("0.0", "1.0") + "domains: {2: 7}\n")  # share out of [0, 1]
            assert wait_for(lambda: any("policy reload rejected" in r.getMessage() for r in caplog.records))
        assert router.policy.default_canary_share == 1.0 and router.policy.domains == {}
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith(f"policy reloaded from {path}: experiment reload") for m in messages)
        rejected = [m for m in messages if "policy reload rejected" in m][0]
        assert "keeping experiment reload" in rejected and "domains.2" in rejected and "[0, 1]" in rejected
    finally:
        watcher.stop()
        client.close()


def test_sighup_reloads_the_running_router(start_model_server, config_path, tmp_path, data_plane):
    backend, _ = start_model_server(config_path)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    log_path = tmp_path / "router.log"
    process = subprocess.Popen([sys.executable, "-m", "crocodile", "router", "--port", "0", "--backend",
                                f"127.0.0.1:{backend}", "--policy", str(path), "--policy-poll-seconds", "0",
                                "--data-plane", data_plane],
                               stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: "listening on port" in log_path.read_text(), 120), log_path.read_text()
        port = int(re.search(r"listening on port (\d+)", log_path.read_text()).group(1))
        path.write_text(POLICY_YAML.replace("0.0", "1.0"))  # not seen until SIGHUP (polling is off)
        time.sleep(0.3)
        with ScoringClient(f"127.0.0.1:{port}") as client:
            context = {"user_segment": "s", "user_region": "r"}
            assert client.regress(1, "u1", candidates(1), context=context).arm == "stable"
            process.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "policy reloaded from" in log_path.read_text()), log_path.read_text()
            assert client.regress(1, "u1", candidates(1), context=context).arm == "canary"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert "SIGHUP, reloading" in log_path.read_text()
    assert os.path.exists(path)
