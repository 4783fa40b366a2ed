"""The embedded model server over real gRPC: scores equal the SavedModel in-process, and TF
Serving's label / version semantics, metadata and status answers."""
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, regression_pb2)

from serving_test_data import (CANARY_VERSION, MODEL_NAME, STABLE_VERSION, candidates, good_features,
                               predict_request, regress_request, serialized, user_context)
from crocodile.serving.examples import make_example, merged_features
from crocodile.serving.model_config import build_model_config, read_model_config


def in_process(model, features_list):
    serialized = tf.constant([make_example(f).SerializeToString() for f in features_list])
    return model.signatures["serving_default"](examples=serialized)["outputs"].numpy()


def wait_for_state(models, status_request, version, state_name, timeout_s=60.0):
    """Polls GetModelStatus until ``version`` is in ``state_name``; returns its ModelVersionStatus."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = {s.version: s for s in models.GetModelStatus(status_request).model_version_status}
        entry = states.get(version)
        if entry is not None and get_model_status_pb2.ModelVersionStatus.State.Name(entry.state) == state_name:
            return entry
        assert time.monotonic() < deadline, f"version {version} not {state_name}: {states}"
        time.sleep(0.05)


def test_predict_and_regress_match_savedmodel_in_process(start_model_server, config_path, prediction_stub,
                                                         reference_models):
    port, _ = start_model_server(config_path)
    stub = prediction_stub(port)
    rows = [good_features(user=f"u{k}", item=f"i{k}", domain=k % 5, price=k * 1.5) for k in range(7)]
    for label, version in (("stable", STABLE_VERSION), ("canary", CANARY_VERSION)):
        response = stub.Predict(predict_request(serialized(rows), label=label))
        assert response.model_spec.version.value == version
        assert response.model_spec.signature_name == "serving_default"
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["outputs"]),
                                   in_process(reference_models[version], rows), rtol=1e-6)
    context, items = user_context(domain=3), candidates(5)
    response = stub.Regress(regress_request(context, items, label="canary"))
    scores = [r.value for r in response.result.regressions]
    expected = in_process(reference_models[CANARY_VERSION], [merged_features(context, i) for i in items])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert response.model_spec.version.value == CANARY_VERSION


def test_candidate_feature_overrides_context_as_proto_merge(start_model_server, config_path, prediction_stub,
                                                             reference_models):
    port, _ = start_model_server(config_path)
    context = user_context(domain=2)
    context["item_category"] = "from-context"
    items = [{"item_id": "i1", "item_category": "from-candidate", "price": 3.0}]
    response = prediction_stub(port).Regress(regress_request(context, items, label="stable"))
    expected = in_process(reference_models[STABLE_VERSION], [merged_features(context, items[0])])
    assert expected[0] != pytest.approx(in_process(reference_models[STABLE_VERSION], [{**items[0], **context}])[0])
    assert response.result.regressions[0].value == pytest.approx(float(expected[0]), rel=1e-6)


def test_no_version_choice_serves_the_latest_and_example_list_works(start_model_server, config_path,
                                                                      prediction_stub):
    port, _ = start_model_server(config_path)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL_NAME
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.add().CopyFrom(make_example(good_features()))
    response = prediction_stub(port).Regress(request)
    assert response.model_spec.version.value == max(STABLE_VERSION, CANARY_VERSION)
    assert len(response.result.regressions) == 1


@pytest.mark.parametrize("mutate, code, message", [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(crocodile, 9)"),
    (lambda r: setattr(r.model_spec, "version_label", "gold"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: gold"),
    (lambda r: setattr(r.model_spec, "name", ""), grpc.StatusCode.INVALID_ARGUMENT,
     "ModelSpec has no name specified."),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
])
def test_model_spec_errors_as_tf_serving(start_model_server, config_path, prediction_stub, mutate, code, message):
    port, _ = start_model_server(config_path)
    stub = prediction_stub(port)
    request = predict_request(serialized([good_features()]))
    mutate(request)
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(request)
    assert error.value.code() == code and error.value.details() == message
    assert stub.Predict(predict_request(serialized([good_features()]), label="stable")).outputs["outputs"].float_val


def test_get_model_metadata_returns_signature_defs(start_model_server, config_path, prediction_stub):
    port, _ = start_model_server(config_path)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    request.model_spec.version_label = "stable"
    response = prediction_stub(port).GetModelMetadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert response.model_spec.version.value == STABLE_VERSION
    assert set(signatures.signature_def) >= {"serving_default", "regress"}
    assert list(signatures.signature_def["regress"].inputs) == ["inputs"]
    bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    bad.model_spec.name = MODEL_NAME
    with pytest.raises(grpc.RpcError) as error:
        prediction_stub(port).GetModelMetadata(bad)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "graph" in error.value.details()


def test_model_status_and_two_step_label_move(start_model_server, config_path, model_base, prediction_stub):
    """A label may only move to a loaded version: one push loads, the next moves (server_core.cc)."""
    # Labels in the very first config fail the same way (TF Serving applies them before the first
    # load; hence --allow_version_labels_for_unavailable_models at start-up), so start unlabelled.
    only_stable = build_model_config(MODEL_NAME, model_base, [STABLE_VERSION])
    path = config_path
    with open(path, "w") as f:
        from crocodile.serving.model_config import format_model_config
        f.write(format_model_config(only_stable))
    port, _ = start_model_server(path, allow_unavailable_labels=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL_NAME
    states = models.GetModelStatus(status_request).model_version_status
    assert [(s.version, s.state) for s in states] == [(STABLE_VERSION, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    status_request.model_spec.version.value = CANARY_VERSION
    with pytest.raises(grpc.RpcError) as error:
        models.GetModelStatus(status_request)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == f"Could not find version {CANARY_VERSION} of model {MODEL_NAME}"

    both = [STABLE_VERSION, CANARY_VERSION]
    jump = build_model_config(MODEL_NAME, model_base, both, {"stable": STABLE_VERSION, "canary": CANARY_VERSION})
    with pytest.raises(grpc.RpcError) as error:
        models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=jump))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == (f"Request to assign label to version {CANARY_VERSION} of model {MODEL_NAME}, "
                                     "which is not currently available for inference")
    load = build_model_config(MODEL_NAME, model_base, both)
    models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=load))
    # As TF Serving, the reload returns before the new version of a served model has loaded.
    status_request.model_spec.ClearField("version")
    wait_for_state(models, status_request, CANARY_VERSION, "AVAILABLE")
    models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=jump))
    response = prediction_stub(port).Predict(predict_request(serialized([good_features()]), label="canary"))
    assert response.model_spec.version.value == CANARY_VERSION
    channel.close()


def test_config_file_round_trips_through_official_proto(config_path, model_base):
    config = read_model_config(config_path)
    model = config.model_config_list.config[0]
    assert (model.name, model.base_path, model.model_platform) == (MODEL_NAME, model_base, "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [STABLE_VERSION, CANARY_VERSION]
    assert dict(model.version_labels) == {"stable": STABLE_VERSION, "canary": CANARY_VERSION}
