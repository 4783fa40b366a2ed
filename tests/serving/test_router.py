"""The canary router over real gRPC: same scores as the SavedModel in-process, arm by policy,
sticky, trailing metadata, fallback when the canary cannot serve, metrics and exposure log."""
import json

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, regression_pb2

from serving_test_data import (CANARY_VERSION, MODEL_NAME, STABLE_VERSION, candidates, good_features,
                               user_context)
from crocodile.serving.client import ScoringClient
from crocodile.serving.examples import example_list_with_context, make_example, merged_features
from crocodile.serving.model_config import build_model_config, format_model_config
from crocodile.serving.policy import CanaryPolicy

HALF = CanaryPolicy.from_dict({"experiment": "t", "salt": "s", "default_canary_share": 0.5,
                               "domains": {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}})
VERSION_OF_ARM = {"stable": STABLE_VERSION, "canary": CANARY_VERSION}


def regress_call(stub, context, items):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "regress"
    request.input.CopyFrom(example_list_with_context(context, items))
    response, call = stub.Regress.with_call(request)
    return response, dict(call.trailing_metadata())


def in_process(model, rows):
    serialized = tf.constant([make_example(r).SerializeToString() for r in rows])
    return model.signatures["serving_default"](examples=serialized)["outputs"].numpy()


def test_regress_and_predict_via_router_match_savedmodel(start_model_server, start_router, config_path,
                                                         prediction_stub, reference_models, tmp_path):
    backend, _ = start_model_server(config_path)
    port, router = start_router(backend, HALF, exposure_log=str(tmp_path / "exposure.jsonl"))
    stub = prediction_stub(port)
    arms = set()
    for k in range(12):
        context, items = user_context(user=f"u{k}", domain=k % 5), candidates(4, start=k)
        response, trailing = regress_call(stub, context, items)
        arm = HALF.arm_for(k % 5, f"u{k}")
        assert trailing == {"x-crocodile-arm": arm, "x-crocodile-version": str(VERSION_OF_ARM[arm])}
        expected = in_process(reference_models[VERSION_OF_ARM[arm]], [merged_features(context, i) for i in items])
        np.testing.assert_allclose([r.value for r in response.result.regressions], expected, rtol=1e-6)
        arms.add(arm)
        rows = [good_features(user=f"u{k}", item=f"i{j}", domain=k % 5) for j in range(3)]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto([make_example(r).SerializeToString() for r in rows]))
        predicted, call = stub.Predict.with_call(request)
        assert dict(call.trailing_metadata())["x-crocodile-arm"] == arm
        np.testing.assert_allclose(tf.make_ndarray(predicted.outputs["outputs"]),
                                   in_process(reference_models[VERSION_OF_ARM[arm]], rows), rtol=1e-6)
    assert arms == {"stable", "canary"}
    router.flush()
    lines = [json.loads(line) for line in open(tmp_path / "exposure.jsonl")]
    assert len(lines) == 24
    assert {"time", "request_id", "experiment", "user", "domain", "assigned_arm", "served_arm", "version",
            "fallback", "latency_ms", "status"} <= set(lines[0])
    for k, line in enumerate(lines):
        arm = HALF.arm_for((k // 2) % 5, f"u{k // 2}")
        assert (line["experiment"], line["user"], line["assigned_arm"], line["served_arm"], line["version"],
                line["fallback"], line["status"]) == ("t", f"u{k // 2}", arm, arm, VERSION_OF_ARM[arm], False, "OK")


def test_router_reaches_a_colocated_backend_over_a_unix_socket(start_model_server, start_router, config_path,
                                                               prediction_stub, reference_models, tmp_path):
    """--grpc_socket_path (TF Serving's flag) on the server, --backend unix:PATH on the router."""
    socket_path = str(tmp_path / "model_server.sock")
    start_model_server(config_path, grpc_socket_path=socket_path)
    port, _ = start_router(f"unix:{socket_path}", HALF)
    stub = prediction_stub(port)
    for k in range(6):
        context, items = user_context(user=f"u{k}", domain=k % 5), candidates(3, start=k)
        response, trailing = regress_call(stub, context, items)
        arm = HALF.arm_for(k % 5, f"u{k}")
        assert trailing["x-crocodile-arm"] == arm
        expected = in_process(reference_models[VERSION_OF_ARM[arm]], [merged_features(context, i) for i in items])
        np.testing.assert_allclose([r.value for r in response.result.regressions], expected, rtol=1e-6)


def test_model_server_names_a_unix_socket_it_cannot_listen_on_and_keeps_a_file_there(start_model_server,
                                                                                     config_path, tmp_path):
    with pytest.raises(OSError, match="cannot listen on UNIX socket .*missing"):
        start_model_server(config_path, grpc_socket_path=str(tmp_path / "missing" / "model_server.sock"))
    kept = tmp_path / "notes.txt"
    kept.write_text("not a socket")
    with pytest.raises(OSError, match="must not be a file other than a socket"):
        start_model_server(config_path, grpc_socket_path=str(kept))
    assert kept.read_text() == "not a socket"


def test_both_servers_name_a_port_already_taken(tmp_path):
    """gRPC 1.85 raises RuntimeError on a failed bind (older releases returned 0): both servers say which port."""
    import socket

    from crocodile.serving.model_server import build_server
    from crocodile.serving.router import Router, build_router_server
    from crocodile.serving.server_core import ServerCore

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    core, router = ServerCore(), Router("127.0.0.1:1", HALF)
    try:
        with pytest.raises(OSError, match=f"cannot listen on port {port}$"):
            build_server(core, port, host="127.0.0.1")
        with pytest.raises(OSError, match=f"cannot listen on port {port}$"):
            build_router_server(router, port, host="127.0.0.1")
    finally:
        router.close()
        core.stop()
        taken.close()


def test_arm_matches_policy_and_is_sticky_over_many_users(start_model_server, start_router, config_path):
    backend, _ = start_model_server(config_path)
    policy = CanaryPolicy.from_dict({"experiment": "t2", "salt": "x", "default_canary_share": 0.3})
    port, router = start_router(backend, policy)
    client = ScoringClient(f"127.0.0.1:{port}")
    served = {}
    for k in range(300):
        user, domain = f"user-{k}", k % 5
        result = client.regress(domain, user, candidates(2), context={"user_segment": "s", "user_region": "r"})
        assert result.arm == policy.arm_for(domain, user)
        assert result.version == VERSION_OF_ARM[result.arm]
        served[(domain, user)] = result.arm
    share = np.mean([arm == "canary" for arm in served.values()])
    assert abs(share - 0.3) < 4.5 * np.sqrt(0.3 * 0.7 / len(served))
    for (domain, user), arm in list(served.items())[:40]:  # sticky: the same arm again
        assert client.regress(domain, user, candidates(1), context={"user_segment": "s", "user_region": "r"}).arm == arm
    router.flush()
    canary_count = sum(arm == "canary" for arm in served.values()) + sum(
        arm == "canary" for arm in list(served.values())[:40])
    assert router.metrics.total("crocodile_router_requests_total", method="Regress", experiment="t2",
                                assigned_arm="canary", served_arm="canary", version=str(CANARY_VERSION),
                                fallback="false", domain="other", code="OK") == canary_count
    client.close()


def test_metadata_headers_route_when_examples_lack_keys(start_model_server, start_router, config_path,
                                                         prediction_stub):
    backend, _ = start_model_server(config_path)
    port, _ = start_router(backend, HALF)
    rows = [good_features(user="u5", domain=2)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([make_example(r).SerializeToString() for r in rows]))
    _, call = prediction_stub(port).Predict.with_call(request, metadata=(("x-domain-id", "2"), ("x-user-id", "u5")))
    assert dict(call.trailing_metadata())["x-crocodile-arm"] == HALF.arm_for(2, "u5")


def _canary_users(policy, domain, count):
    users = [f"c{k}" for k in range(200)]
    return [u for u in users if policy.arm_for(domain, u) == "canary"][:count]


@pytest.mark.parametrize("how", ["label removed", "version unloaded"])
def test_canary_unavailable_falls_back_to_stable_and_counts(start_model_server, start_router, tmp_path,
                                                            model_base, how):
    if how == "label removed":   # the config no longer has a canary label: INVALID_ARGUMENT from TF Serving
        config = build_model_config(MODEL_NAME, model_base, [STABLE_VERSION], {"stable": STABLE_VERSION})
    else:                        # the label points at a version that is not loaded: NOT_FOUND
        config = build_model_config(MODEL_NAME, model_base, [STABLE_VERSION, 7],
                                    {"stable": STABLE_VERSION, "canary": 7})
    path = tmp_path / "config.pbtxt"
    path.write_text(format_model_config(config))
    backend, _ = start_model_server(str(path))
    port, router = start_router(backend, HALF, exposure_log=str(tmp_path / "exposure.jsonl"))
    client = ScoringClient(f"127.0.0.1:{port}")
    users = _canary_users(HALF, 1, 5)
    for user in users:
        result = client.regress(1, user, candidates(3), context={"user_segment": "s", "user_region": "r"})
        assert (result.arm, result.version) == ("stable", STABLE_VERSION)
    code = "INVALID_ARGUMENT" if how == "label removed" else "NOT_FOUND"
    router.flush()
    metrics = router.metrics
    assert metrics.value("crocodile_router_fallbacks_total", experiment="t", assigned_arm="canary",
                         served_arm="stable", version=str(STABLE_VERSION), fallback="true", domain="1",
                         code=code) == len(users)
    # The canary's failures count against the canary, although every client got an answer.
    assert metrics.value("crocodile_router_backend_calls_total", experiment="t", arm="canary", code=code) == len(users)
    assert metrics.total("crocodile_router_requests_total", assigned_arm="canary", served_arm="stable",
                         fallback="true", code="OK") == len(users)
    lines = [json.loads(line) for line in open(tmp_path / "exposure.jsonl")]
    assert len(lines) == len(users)
    assert all(line["fallback"] and (line["assigned_arm"], line["served_arm"]) == ("canary", "stable")
               and line["canary_error"].startswith(code) for line in lines)
    fail_policy = CanaryPolicy.from_dict({**HALF.__dict__, "on_canary_failure": "fail"})
    fail_port, fail_router = start_router(backend, fail_policy)
    with pytest.raises(grpc.RpcError) as error:
        ScoringClient(f"127.0.0.1:{fail_port}").regress(1, users[0], candidates(1), context={"user_segment": "s",
                                                                                          "user_region": "r"})
    assert error.value.code().name == code
    client.close()


def test_explicit_version_refused_unless_policy_allows(start_model_server, start_router, config_path,
                                                       prediction_stub):
    backend, _ = start_model_server(config_path)
    port, router = start_router(backend, HALF)
    client = ScoringClient(f"127.0.0.1:{port}")
    context = {"user_segment": "s", "user_region": "r"}
    with pytest.raises(grpc.RpcError) as error:
        client.regress(0, "anyone", candidates(2), context=context, label="canary")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "allow_client_version" in error.value.details()
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.version.value = CANARY_VERSION
    request.model_spec.signature_name = "regress"
    request.input.CopyFrom(example_list_with_context(user_context(user="x", domain=0), candidates(1)))
    with pytest.raises(grpc.RpcError) as error:
        prediction_stub(port).Regress(request)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and "version 2" in error.value.details()
    allowing = CanaryPolicy.from_dict({**HALF.__dict__, "allow_client_version": True})
    allowed_port, allowed_router = start_router(backend, allowing)
    allowed = ScoringClient(f"127.0.0.1:{allowed_port}")
    for label in ("stable", "canary"):
        result = allowed.regress(0, "anyone", candidates(2), context=context, label=label)
        assert (result.arm, result.version) == (label, VERSION_OF_ARM[label])
    response, call = prediction_stub(allowed_port).Regress.with_call(request)
    assert response.model_spec.version.value == CANARY_VERSION
    assert dict(call.trailing_metadata())["x-crocodile-arm"] == "client"
    # Arm labels come from the policy or the fixed word 'client', never from the request's strings.
    allowed_router.flush()
    arms = {sample.labels["assigned_arm"] for family in allowed_router.metrics.registry.collect()
            for sample in family.samples if "assigned_arm" in sample.labels}
    assert arms == {"client"}
    client.close()
    allowed.close()
