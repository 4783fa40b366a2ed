"""The compiled data plane against the Python router, request by request, over real gRPC.

Both routers stand in front of the same model server with the same policy and get the same raw
request bytes and metadata. Every answer (status, details, trailing metadata, response bytes) and
every exposure record (but its time, latency and generated request id) must be identical; and the
data plane must have served the requests it can serve itself, passing only the others to Python.
The other router tests run with both data planes too (conftest's ``data_plane``).
"""
import json
import logging
import re
import signal
import socket

import grpc
import pytest
from tensorflow_serving.apis import get_model_metadata_pb2, regression_pb2

from serving_test_data import (MODEL_NAME, candidates, good_features, native_data_plane_or_skip, predict_request,
                               serialized, user_context)
from crocodile.serving.examples import example_list_with_context, make_example
from crocodile.serving.native_router import NativeDataPlane
from crocodile.serving.policy import CanaryPolicy
from crocodile.serving.router import Router, build_router_server, shutdown
from crocodile.serving.wire_protos import length_delimited_field

POLICY = CanaryPolicy.from_dict({"experiment": "same", "salt": "s", "default_canary_share": 0.5,
                                 "domains": {3: 0.0, 4: 1.0}})
SERVICE = "/tensorflow.serving.PredictionService/"
ROUTED = ("x-crocodile-arm", "x-crocodile-version")


def _regress(context, items, **spec):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = spec.pop("name", MODEL_NAME)
    request.model_spec.signature_name = "regress"
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.input.CopyFrom(example_list_with_context(context, items))
    return request.SerializeToString()


def _example_list_only(user, domain):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "regress"
    for k in range(2):
        request.input.example_list.examples.add().CopyFrom(make_example(good_features(user=user, item=f"i{k}",
                                                                                      domain=domain)))
    return request.SerializeToString()


def _unpacked_domain_context(user, domain):
    """A context Example whose domain_id int64 is written unpacked (valid protobuf a packed writer never makes)."""
    features = make_example({k: v for k, v in user_context(user=user).items() if k != "domain_id"}).features
    unpacked = length_delimited_field(3, bytes([0x08, domain]))  # Int64List.value as one varint field
    entry = length_delimited_field(1, b"domain_id") + length_delimited_field(2, unpacked)
    context = length_delimited_field(1, features.SerializeToString() + length_delimited_field(1, entry))
    spec = length_delimited_field(1, MODEL_NAME.encode()) + length_delimited_field(3, b"regress")
    examples = b"".join(length_delimited_field(1, make_example(item).SerializeToString()) for item in candidates(2))
    return length_delimited_field(1, spec) + length_delimited_field(2, length_delimited_field(
        2, examples + length_delimited_field(2, context)))


def _predict(rows, **kwargs):
    return predict_request(serialized(rows), **kwargs).SerializeToString()


def _metadata_request():
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    request.model_spec.version_label = "canary"
    return request.SerializeToString()


# (name, method, body, metadata, served by the data plane itself)
CASES = [
    ("regress with context", "Regress", _regress(user_context(user="a1", domain=1), candidates(3)), (), True),
    ("regress, canary domain", "Regress", _regress(user_context(user="a2", domain=4), candidates(2)), (), True),
    ("regress, stable-only domain", "Regress", _regress(user_context(user="a3", domain=3), candidates(2)), (), True),
    ("regress, keys in the first example", "Regress", _example_list_only("a4", 2), (), True),
    ("regress, unpacked int64 domain", "Regress", _unpacked_domain_context("a5", 4), (), True),
    ("predict", "Predict", _predict([good_features(user="a6", domain=0, item=f"i{k}") for k in range(3)]), (), True),
    ("predict, keys from metadata", "Predict",
     _predict([{k: v for k, v in good_features().items() if k not in ("user_id", "domain_id")}]),
     (("x-domain-id", "2"), ("x-user-id", "a7")), True),
    ("request id given", "Regress", _regress(user_context(user="a8", domain=1), candidates(1)),
     (("x-request-id", "req-42"),), True),
    ("user id to escape in JSON", "Regress", _regress(user_context(user='\u00fc"\\\t\u20ac\U0001f600', domain=4),
                                                      candidates(1)), (("x-request-id", 'q"\\1'),), True),
    ("explicit label refused", "Regress", _regress(user_context(), candidates(1), version_label="canary"), (), False),
    ("explicit version refused", "Predict", _predict([good_features()], version=2), (), False),
    ("unknown model", "Regress", _regress(user_context(), candidates(1), name="other"), (), False),
    ("domain of the wrong kind", "Regress", _regress({**user_context(), "domain_id": "one"}, candidates(1)), (),
     False),
    ("no user anywhere", "Regress", _regress({"domain_id": 1, "user_segment": "s", "user_region": "r"},
                                             candidates(1)), (), False),
    ("metadata domain not a number", "Predict",
     _predict([{k: v for k, v in good_features().items() if k != "domain_id"}]), (("x-domain-id", "two"),), False),
    ("user id not UTF-8", "Regress", _regress({**user_context(), "user_id": b"\xff\xfeu"}, candidates(1)), (),
     False),
    ("not a request", "Regress", b"\x0a\xff\x01", (), False),
    ("model metadata", "GetModelMetadata", _metadata_request(), (), False),
]


def _call(port, method, body, metadata):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(SERVICE + method)
        try:
            response, outcome = call.with_call(body, metadata=metadata, timeout=20)
        except grpc.RpcError as error:
            return error.code().name, error.details(), None, {}
    if method == "GetModelMetadata":  # its signature map serializes in no fixed order: compare messages
        answer = get_model_metadata_pb2.GetModelMetadataResponse.FromString(response)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        answer.metadata["signature_def"].Unpack(signatures)
        response = (answer.model_spec, signatures)
    return "OK", "", response, {k: v for k, v in outcome.trailing_metadata() if k in ROUTED}


def _comparable(line):
    line = {k: v for k, v in line.items() if k not in ("time", "latency_ms")}
    if line.get("request_id") not in ("req-42", 'q"\\1'):
        line.pop("request_id")
    return line


COUNTED = ("crocodile_router_requests_total", "crocodile_router_errors_total",
           "crocodile_router_backend_calls_total", "crocodile_router_fallbacks_total",
           "crocodile_router_request_latency_seconds_count")


def _counted(router):
    """Every request metric but latencies: {(sample name, labels): value}."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in router.metrics.registry.collect() for sample in family.samples
            if sample.name in COUNTED and sample.value}


def _histograms_add_up(router):
    """Each latency histogram's +Inf bucket equals its count, and its buckets never decrease."""
    samples = [s for family in router.metrics.registry.collect() for s in family.samples
               if s.name.startswith("crocodile_router_request_latency_seconds")]
    counts = {tuple(sorted(s.labels.items())): s.value for s in samples if s.name.endswith("_count")}
    for labels, count in counts.items():
        buckets = [s for s in samples if s.name.endswith("_bucket")
                   and tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) == labels]
        values = [s.value for s in buckets]
        assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf" and values[-1] == count, labels
    return bool(counts)


@pytest.mark.parametrize("threads", [1, 2])
def test_native_data_plane_answers_and_records_as_the_python_router(start_model_server, config_path, tmp_path,
                                                                     threads):
    native_data_plane_or_skip()
    backend, _ = start_model_server(config_path)
    python_router = Router(f"127.0.0.1:{backend}", POLICY, exposure_log=str(tmp_path / "python.jsonl"))
    server, python_port = build_router_server(python_router, 0, host="127.0.0.1")
    server.start()
    native_router = Router(f"127.0.0.1:{backend}", POLICY, exposure_log=str(tmp_path / "native.jsonl"))
    plane = NativeDataPlane(native_router, 0, host="127.0.0.1", grace_s=2.0, threads=threads)
    native_port = plane.start()
    try:
        for name, method, body, metadata, _ in CASES:
            expected = _call(python_port, method, body, metadata)
            assert _call(native_port, method, body, metadata) == expected, name
        python_router.flush()
        native_router.flush()
        # The data plane served these itself; Python answered the rest (refusals, metadata).
        assert plane.records == sum(case[4] for case in CASES)
        python_lines = [_comparable(json.loads(line)) for line in open(tmp_path / "python.jsonl")]
        native_text = (tmp_path / "native.jsonl").read_text()
        made_ids = [json.loads(line)["request_id"] for line in native_text.splitlines()]
        made_ids = [i for i in made_ids if i not in ("req-42", 'q"\\1')]
        assert len(set(made_ids)) == len(made_ids) and all(re.fullmatch("[0-9a-f]{32}", i) for i in made_ids)
        native_lines = [_comparable(json.loads(line)) for line in native_text.splitlines()]
        # Written as the Python telemetry writes them (the data plane writes its own), byte for byte.
        assert [json.dumps(json.loads(line), separators=(",", ":"), sort_keys=True) for line in
                native_text.splitlines()] == native_text.splitlines()
        # The data plane sums its requests' metrics: the same counts, label for label.
        assert _counted(native_router) == _counted(python_router)
        assert _histograms_add_up(native_router) and _histograms_add_up(python_router)
        routed = [case for case in CASES if case[1] != "GetModelMetadata"]
        assert len(native_lines) == len(routed)
        assert sorted(native_lines, key=json.dumps) == sorted(python_lines, key=json.dumps)
        # Both arms and the graph's own refusal (examples without their keys) went through the fast path.
        assert {(line["assigned_arm"], line["status"]) for line in native_lines} >= {
            ("stable", "OK"), ("canary", "OK"), (POLICY.arm_for(2, "a7"), "INVALID_ARGUMENT")}
        assert {line["assigned_arm"] for line in native_lines if line["status"] == "OK"} == {"stable", "canary"}
    finally:
        plane.stop()
        shutdown(server, python_router, grace_s=1.0)


def test_data_plane_that_cannot_listen_says_so(start_model_server, config_path):
    native_data_plane_or_skip()
    backend, _ = start_model_server(config_path)
    first = NativeDataPlane(Router(f"127.0.0.1:{backend}", POLICY), 0, host="127.0.0.1")
    port = first.start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    routers = [Router(f"127.0.0.1:{backend}", POLICY) for _ in range(2)]
    try:  # a port another program holds, and one a running data plane holds (no silent port sharing)
        for router, busy in zip(routers, (taken.getsockname()[1], port)):
            with pytest.raises(OSError, match=f"cannot listen on port {busy}$"):
                NativeDataPlane(router, busy, host="127.0.0.1").start()
    finally:
        taken.close()
        first.stop()
        for router in routers:
            router.close()


def test_a_data_plane_that_dies_is_reported(start_model_server, config_path, caplog):
    native_data_plane_or_skip()
    backend, _ = start_model_server(config_path)
    router = Router(f"127.0.0.1:{backend}", POLICY)
    plane = NativeDataPlane(router, 0, host="127.0.0.1")
    plane.start()
    try:
        with caplog.at_level(logging.ERROR, logger="crocodile.serving.router"):
            plane._process.send_signal(signal.SIGKILL)
            plane._reader.join(10)
        assert f"router data plane exited with status {-signal.SIGKILL}" in caplog.text
    finally:
        plane.stop()
