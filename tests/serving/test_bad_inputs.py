"""Bad input on BOTH servers (the model server directly, and through the router): each case gets
the status TF Serving answers, with a message naming the problem, and the server keeps serving."""
import grpc
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

import serving_test_data as data
from serving_test_data import MODEL_NAME, candidates, good_features, native_data_plane_or_skip, user_context
from crocodile.serving.batching import BatchingOptions
from crocodile.serving.examples import make_example
from crocodile.serving.policy import CanaryPolicy

MAX_BATCH = 64
MAX_MESSAGE_BYTES = 256 * 1024
# The cases name labels and versions to reach both servers alike: the router must let them through.
POLICY = CanaryPolicy.from_dict({"experiment": "bad", "salt": "s", "default_canary_share": 0.5,
                                 "allow_client_version": True})


@pytest.fixture(scope="module")
def targets(model_base, tmp_path_factory):
    """{'model_server': port, 'router': port, 'native_router': port}: batching on (max_batch_size 64),
    256 KiB messages. The native router (compiled data plane in front of a second Router) must answer
    as the router does; it is left out when not built (serving_test_data.native_data_plane_or_skip)."""
    from crocodile.serving.model_config import read_model_config, write_model_config
    from crocodile.serving.model_server import build_server
    from crocodile.serving.router import Router, build_router_server, shutdown
    from crocodile.serving.server_core import ServerCore
    path = str(tmp_path_factory.mktemp("bad") / "config.pbtxt")
    write_model_config(path, MODEL_NAME, model_base, 1, 2)
    core = ServerCore(allow_version_labels_for_unavailable_models=True)
    core.reload_config(read_model_config(path))
    options = BatchingOptions(max_batch_size=MAX_BATCH, batch_timeout_micros=1000, num_batch_threads=2,
                              max_enqueued_batches=8)
    server, port, scheduler = build_server(core, 0, options, grpc_options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)], host="127.0.0.1")
    server.start()
    router = Router(f"127.0.0.1:{port}", POLICY, max_message_bytes=MAX_MESSAGE_BYTES)
    router_server, router_port = build_router_server(router, 0, host="127.0.0.1")
    router_server.start()
    found = {"model_server": port, "router": router_port}
    plane = None
    if native_data_plane_available():
        from crocodile.serving.native_router import NativeDataPlane
        plane = NativeDataPlane(Router(f"127.0.0.1:{port}", POLICY, max_message_bytes=MAX_MESSAGE_BYTES), 0,
                                host="127.0.0.1", grace_s=1.0)
        found["native_router"] = plane.start()
    yield found
    if plane is not None:
        plane.stop()
    shutdown(router_server, router, 1.0)
    server.stop(0).wait()
    scheduler.stop()


def regress_request(context, items, label="stable"):
    return data.regress_request(context, items, label=label)


def predict_request(serialized, label="stable"):
    return data.predict_request(serialized, label=label)


def without(features, key):
    return {k: v for k, v in features.items() if k != key}


def native_data_plane_available() -> bool:
    try:
        native_data_plane_or_skip()
        return True
    except pytest.skip.Exception:
        return False


def port_of(targets, target):
    if target not in targets:
        native_data_plane_or_skip()
    return targets[target]


def call(port, method, request):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        return getattr(prediction_service_pb2_grpc.PredictionServiceStub(channel), method)(request, timeout=20)
    finally:
        channel.close()


# (case, method, request factory, {target: (code, text the message must contain)})
CASES = [
    ("garbage bytes in the examples tensor", "Predict", lambda: predict_request([b"\xff\xfegarbage"]),
     {"model_server": ("INVALID_ARGUMENT", "Could not parse example input"),
      "router": ("INVALID_ARGUMENT", "is not a serialized tf.Example")}),
    ("missing required feature", "Regress",
     lambda: regress_request(without(user_context(), "user_region"), candidates(2)),
     {"*": ("INVALID_ARGUMENT", "user_region")}),
    ("missing feature in Predict", "Predict",
     lambda: predict_request([make_example(without(good_features(), "item_category")).SerializeToString()]),
     {"*": ("INVALID_ARGUMENT", "item_category")}),
    ("feature of the wrong type", "Regress",
     lambda: regress_request(user_context(), [{"item_id": "i1", "item_category": "c", "price": 3}]),
     {"*": ("INVALID_ARGUMENT", "price")}),
    ("unknown domain id", "Regress", lambda: regress_request(user_context(domain=9), candidates(2)),
     {"*": ("INVALID_ARGUMENT", "domain_id must be in [0, 5)")}),
    ("unknown model name", "Regress",
     lambda: (lambda r: (setattr(r.model_spec, "name", "ghost"), r)[1])(regress_request(user_context(), candidates(1), label=None)),
     {"model_server": ("NOT_FOUND", "Servable not found for request: Latest(ghost)"),
      "router": ("NOT_FOUND", "model 'ghost'")}),
    ("unknown label", "Regress", lambda: regress_request(user_context(), candidates(1), label="gold"),
     {"*": ("INVALID_ARGUMENT", "Unrecognized servable version label: gold")}),
    ("empty request", "Regress", lambda: regress_request(user_context(), [], label=None),
     {"*": ("INVALID_ARGUMENT", "Input is empty.")}),
    ("empty request without context", "Regress",
     lambda: (lambda r: (r.input.Clear(), r)[1])(regress_request(user_context(), [], label=None)),
     {"model_server": ("INVALID_ARGUMENT", "Input is empty."),
      "router": ("INVALID_ARGUMENT", "request has no 'domain_id'")}),
    ("empty Predict inputs", "Predict",
     lambda: (lambda r: (r.inputs.clear(), r)[1])(predict_request([b""])),
     {"model_server": ("INVALID_ARGUMENT", "Missing but required: {examples}"),
      "router": ("INVALID_ARGUMENT", "request has no 'domain_id'")}),
    ("more examples than max_batch_size", "Regress", lambda: regress_request(user_context(), candidates(MAX_BATCH + 1)),
     {"*": ("INVALID_ARGUMENT", f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}")}),
    ("message larger than the configured limit", "Regress",
     lambda: regress_request({**user_context(), "user_segment": "x" * (MAX_MESSAGE_BYTES + 1)}, candidates(1)),
     {"*": ("RESOURCE_EXHAUSTED", "larger than max")}),
]


TARGETS = ["model_server", "router", "native_router"]  # native_router: expected as the router


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case, method, make_request, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_answered_then_server_keeps_serving(targets, target, case, method, make_request, expected):
    port = port_of(targets, target)
    code, text = expected.get(target.replace("native_", ""), expected.get("*"))
    with pytest.raises(grpc.RpcError) as error:
        call(port, method, make_request())
    assert error.value.code().name == code, error.value.details()
    assert text in error.value.details()
    response = call(port, "Regress", regress_request(user_context(), candidates(3)))
    assert len(response.result.regressions) == 3


@pytest.mark.parametrize("target, code", [("router", "INVALID_ARGUMENT"), ("native_router", "INVALID_ARGUMENT"),
                                          ("model_server", "INTERNAL")])
def test_undecodable_request_body(targets, target, code):
    """Bytes that are no RegressionRequest at all. The router parses the body itself and answers
    INVALID_ARGUMENT; a generated gRPC servicer (TF Serving's C++ one, and the embedded server's
    Python one) fails deserialization in the gRPC layer before any TF Serving code runs: INTERNAL."""
    port = port_of(targets, target)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Regress")
    with pytest.raises(grpc.RpcError) as error:
        raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert error.value.code().name == code
    if target != "model_server":
        assert "not a valid tensorflow.serving.RegressionRequest" in error.value.details()
    channel.close()
    assert call(port, "Regress", regress_request(user_context(), candidates(1))).result.regressions


@pytest.mark.parametrize("target", TARGETS)
def test_garbage_candidate_in_a_well_formed_regress_request(targets, target):
    """The model server keeps Regress candidates as bytes (TF Serving's SerializedInput), so a
    candidate that is no tf.Example reaches the graph's parser, as in Predict: INVALID_ARGUMENT."""
    from crocodile.serving import wire_protos
    from crocodile.serving.examples import make_example
    request = wire_protos.SerializedRegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = MODEL_NAME, "regress"
    request.model_spec.version_label = "stable"
    lists = request.input.example_list_with_context
    lists.context.append(make_example(user_context()).SerializeToString())
    lists.examples.extend([make_example(candidates(1)[0]).SerializeToString(), b"\xff\xfegarbage"])
    channel = grpc.insecure_channel(f"127.0.0.1:{port_of(targets, target)}")
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Regress")
    with pytest.raises(grpc.RpcError) as error:
        raw(request.SerializeToString(), timeout=20)
    channel.close()
    assert error.value.code().name == "INVALID_ARGUMENT"
    assert "Could not parse example input" in error.value.details()


@pytest.mark.parametrize("target", TARGETS)
def test_valid_predict_on_the_batching_server(targets, target):
    rows = [good_features(user=f"u{k}", domain=k % 5) for k in range(3)]
    response = call(port_of(targets, target), "Predict", predict_request(data.serialized(rows), label=None))
    assert len(response.outputs["outputs"].float_val) == 3
