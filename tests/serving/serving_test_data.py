"""Request data and helpers shared by the serving tests (canonical WORLD_FEATURES columns)."""
import os
import socket

MODEL_NAME = "crocodile"
STABLE_VERSION, CANARY_VERSION = 1, 2


def free_port() -> int:
    """A TCP port free on loopback now (for servers started as separate processes)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def good_features(user="u00042", item="i00017", domain=1, price=12.5):
    return {"user_id": user, "item_id": item, "domain_id": domain, "user_segment": "seg3",
            "user_region": "r2", "item_category": "c7", "price": price}


def user_context(user="u00042", domain=1):
    return {"user_id": user, "domain_id": domain, "user_segment": "seg3", "user_region": "r2"}


def candidates(n, start=0):
    return [{"item_id": f"i{start + k:05d}", "item_category": f"c{k % 4}", "price": 1.0 + k} for k in range(n)]


def regress_request(context, items, label=None, model_name=MODEL_NAME):
    """RegressionRequest on the 'regress' signature with an ExampleListWithContext."""
    from tensorflow_serving.apis import regression_pb2

    from crocodile.serving.examples import example_list_with_context
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "regress"
    if label:
        request.model_spec.version_label = label
    request.input.CopyFrom(example_list_with_context(context, items))
    return request


def predict_request(serialized, label=None, version=None):
    """PredictRequest on serving_default with an [N] string tensor of serialized Examples."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    if label:
        request.model_spec.version_label = label
    if version:
        request.model_spec.version.value = version
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(serialized, dtype=tf.string))
    return request


def serialized(rows):
    from crocodile.serving.examples import make_example
    return [make_example(row).SerializeToString() for row in rows]


def native_data_plane_or_skip():
    """The compiled data plane's path; skips when it is not built, unless CI requires it."""
    import pytest

    from crocodile.errors import UserError
    from crocodile.serving.native_router import find_binary
    try:
        return find_binary()
    except UserError as error:
        if os.environ.get("CROCODILE_REQUIRE_NATIVE_ROUTER") == "1":
            raise
        pytest.skip(f"{error} (CROCODILE_REQUIRE_NATIVE_ROUTER=1 makes this a failure)")
