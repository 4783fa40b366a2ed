"""Warmup replay at load, as TF Serving's --enable_model_warmup: the requests in
assets.extra/tf_serving_warmup_requests run before a version is AVAILABLE, and a failing one fails
the load (so the replay demonstrably happens); with warmup off the same version loads."""
import os
import shutil

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2

from serving_test_data import MODEL_NAME, candidates, good_features, predict_request, regress_request, serialized, \
    user_context
from crocodile.serving import status, warmup
from crocodile.serving.model_config import build_model_config
from crocodile.serving.server_core import ServerCore

State = get_model_status_pb2.ModelVersionStatus


@pytest.fixture
def base(tmp_path, model_base):
    path = tmp_path / MODEL_NAME
    shutil.copytree(f"{model_base}/1", path / "1")
    return path


def start_core(base, **options):
    core = ServerCore(max_num_load_retries=0, file_system_poll_wait_seconds=0, **options)
    try:
        core.reload_config(build_model_config(MODEL_NAME, str(base), [1]))
    finally:
        core.stop()
    return core


def test_good_warmup_loads_and_counts(base):
    good = [predict_request(serialized([good_features(), good_features(user="u2")])),
            regress_request(user_context(), candidates(3))]
    warmup.write_warmup_requests(str(base / "1"), good)
    core = start_core(base)
    assert core.version_states(MODEL_NAME) == [(1, State.AVAILABLE, grpc.StatusCode.OK, "")]
    from crocodile.serving.servable import LoadedVersion
    assert warmup.replay(LoadedVersion(MODEL_NAME, 1, str(base / "1")), str(base / "1"), iterations=2) == 2


def test_failing_warmup_request_fails_the_load_unless_warmup_is_off(base):
    features = good_features()
    del features["item_category"]
    warmup.write_warmup_requests(str(base / "1"), [predict_request(serialized([features]))])
    with pytest.raises(status.ServingError) as error:
        start_core(base)
    assert error.value.code == grpc.StatusCode.UNKNOWN
    assert error.value.message.startswith(
        f"1 servable(s) did not become available: {{{{name: {MODEL_NAME} version: 1 due to error: INVALID_ARGUMENT:")
    assert "item_category" in error.value.message
    core = start_core(base, enable_model_warmup=False)
    assert core.version_states(MODEL_NAME)[0][1] == State.AVAILABLE


def test_warmup_file_that_is_no_tfrecord_is_data_loss(base):
    path = warmup.warmup_path(str(base / "1"))
    os.makedirs(os.path.dirname(path))
    open(path, "wb").write(b"this is not a TFRecord file at all")
    core = ServerCore(max_num_load_retries=0, file_system_poll_wait_seconds=0)
    with pytest.raises(status.ServingError):
        core.reload_config(build_model_config(MODEL_NAME, str(base), [1]))
    (_, state, code, message), = core.version_states(MODEL_NAME)
    core.stop()
    assert (state, code) == (State.END, grpc.StatusCode.DATA_LOSS)
    assert message.endswith(". Please verify your warmup data is in TFRecord format.")
