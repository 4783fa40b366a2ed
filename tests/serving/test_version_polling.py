"""The embedded server as TF Serving where a client can tell: versions appear by file-system
polling (no reload call), load off the request path with LOADING -> AVAILABLE, a broken version
reports its error while the old one keeps serving, config validation, health, 2 GB messages."""
import os
import shutil
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc

from serving_test_data import MODEL_NAME, good_features, predict_request, serialized
from crocodile.cli import main as crocodile_main
from crocodile.serving.model_config import build_model_config, format_model_config
from crocodile.serving.servable import LoadedVersion
from test_model_server import in_process, wait_for_state

State = get_model_status_pb2.ModelVersionStatus.State
POLL_S = 0.1


def latest_policy_config(tmp_path, base):
    """model_config_list with the default version policy (latest 1), no labels."""
    config = build_model_config(MODEL_NAME, str(base), [])
    config.model_config_list.config[0].ClearField("model_version_policy")
    path = tmp_path / "latest.pbtxt"
    path.write_text(format_model_config(config))
    return str(path)


def push(source, base, version):
    """Writes a version the way a pusher should: copy aside, then one rename into the base path."""
    staging = base.parent / f".staging-{version}"
    shutil.copytree(source, staging)
    os.rename(staging, base / str(version))


@pytest.fixture
def one_version_base(tmp_path, model_base):
    base = tmp_path / MODEL_NAME
    base.mkdir()
    push(os.path.join(model_base, "1"), base, 1)
    return base


def status_request(version=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    if version is not None:
        request.model_spec.version.value = version
    return request


def test_pushed_version_becomes_available_and_serves_without_reload(
        tmp_path, model_base, one_version_base, start_model_server, prediction_stub, reference_models):
    gate = threading.Event()

    def gated_loader(name, version, path):  # holds version 2 in LOADING until the test has looked
        if version == 2:
            assert gate.wait(60)
        return LoadedVersion(name, version, path)
    port, core = start_model_server(latest_policy_config(tmp_path, one_version_base),
                                    file_system_poll_wait_seconds=POLL_S, loader=gated_loader)
    stub = prediction_stub(port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    rows = [good_features(user=f"u{k}", item=f"i{k}", domain=k % 5) for k in range(4)]
    assert stub.Predict(predict_request(serialized(rows))).model_spec.version.value == 1

    push(os.path.join(model_base, "2"), one_version_base, 2)
    wait_for_state(models, status_request(), 2, "LOADING")
    response = stub.Predict(predict_request(serialized(rows)))  # the old version serves meanwhile
    assert response.model_spec.version.value == 1
    gate.set()
    entry = wait_for_state(models, status_request(), 2, "AVAILABLE")
    assert (entry.status.error_code, entry.status.error_message) == (0, "")
    response = stub.Predict(predict_request(serialized(rows)))
    assert response.model_spec.version.value == 2
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["outputs"]), in_process(reference_models[2], rows),
                               rtol=1e-6)
    # latest-1 policy: once 2 is AVAILABLE, 1 is unloaded; GetModelStatus lists both, highest first.
    wait_for_state(models, status_request(), 1, "END")
    assert [s.version for s in models.GetModelStatus(status_request()).model_version_status] == [2, 1]
    channel.close()


def test_broken_version_reports_its_error_and_old_version_keeps_serving(
        tmp_path, model_base, one_version_base, start_model_server, prediction_stub):
    port, _ = start_model_server(latest_policy_config(tmp_path, one_version_base),
                                 file_system_poll_wait_seconds=POLL_S, max_num_load_retries=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    broken = one_version_base / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\x0a\xff not a SavedModel")
    entry = wait_for_state(models, status_request(), 3, "END")
    assert entry.status.error_code == grpc.StatusCode.DATA_LOSS.value[0]
    assert entry.status.error_message == f"Can't parse {broken}/saved_model.pb as binary proto"
    assert models.GetModelStatus(status_request(1)).model_version_status[0].state == State.AVAILABLE
    response = prediction_stub(port).Predict(predict_request(serialized([good_features()])))
    assert response.model_spec.version.value == 1
    # A version folder with no SavedModel at all: TensorFlow's NOT_FOUND, and still version 1 serves.
    (one_version_base / "4").mkdir()
    entry = wait_for_state(models, status_request(), 4, "END")
    assert entry.status.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert entry.status.error_message.startswith(
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {one_version_base}/4")
    assert prediction_stub(port).Predict(predict_request(serialized([good_features()]))).model_spec.version.value == 1
    channel.close()


NO_PLATFORM = ("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
               "ModelServerConfig::model_platform, model name is crocodile")


@pytest.mark.parametrize("edit, message, start_message", [
    (lambda m: setattr(m, "base_path", "models/crocodile"),
     "Expected model crocodile to have an absolute path or URI; got base_path()=models/crocodile", None),
    (lambda m: m.ClearField("model_platform"), NO_PLATFORM, None),
    (lambda m: setattr(m, "model_platform", "pytorch"),  # a served model may not change platform
     "Illegal to change a model's platform. For model crocodile platform was tensorflow and new platform "
     "requested is pytorch", "Model crocodile requests unsupported platform pytorch"),
])
def test_config_validation_as_tf_serving(tmp_path, config_path, model_base, start_model_server, capsys,
                                         edit, message, start_message):
    port, core = start_model_server(config_path)
    config = build_model_config(MODEL_NAME, model_base, [1, 2])
    edit(config.model_config_list.config[0])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config))
    assert (error.value.code(), error.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert core.available_versions(MODEL_NAME) == [1, 2]  # the refused config changed nothing
    # The same file at start-up: the server refuses to start, naming the problem.
    path = tmp_path / "bad.pbtxt"
    path.write_text(format_model_config(config))
    assert crocodile_main(["model-server", "--port", "0", "--model_config_file", str(path)]) == 2
    assert f"INVALID_ARGUMENT: {start_message or message}" in capsys.readouterr().err


def test_health_service_and_two_gigabyte_messages(config_path, start_model_server, prediction_stub):
    port, _ = start_model_server(config_path, health=True)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        checker = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ModelService", "PredictionService"):
            response = checker.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            checker.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # 6 MB request: above gRPC's 4 MB default, well within TF Serving's 2 GB. The padding feature is
    # not in the model's parse spec, so the scores are those of the plain rows.
    rows = [dict(good_features(user=f"u{k}"), padding="x" * 60_000) for k in range(100)]
    request = predict_request(serialized(rows), label="stable")
    assert request.ByteSize() > 6_000_000
    response = prediction_stub(port).Predict(request)
    assert len(response.outputs["outputs"].float_val) == 100
