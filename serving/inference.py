"""Predict, Regress and GetModelMetadata on one servable, with TF Serving's checks and messages.

Shared by the gRPC servicer (crocodile.serving.model_server) and the warmup replay at load
(crocodile.serving.warmup), as TF Serving shares RunPredict / RunRegress between both
(tensorflow_serving/servables/tensorflow/predict_util.cc, regressor.cc, util.cc,
get_model_metadata_impl.cc). ``run(servable, signature_name, inputs)`` executes the signature:
directly, or through the batch scheduler.
"""
from typing import Callable, Dict

import numpy as np
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, regression_pb2

from crocodile.serving import status, wire_protos
from crocodile.serving.tensor_protos import to_ndarray, to_tensor_proto

DEFAULT_SIGNATURE = "serving_default"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"
SIGNATURE_DEF_FIELD = "signature_def"

Run = Callable[[object, str, Dict[str, np.ndarray]], Dict[str, np.ndarray]]


def run_directly(servable, signature_name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return servable.run(signature_name, inputs)


def serialized_input(model_input) -> "wire_protos.SerializedInput":
    """An ``Input`` with its Examples as bytes (TF Serving's internal SerializedInput).

    The model server parses Regress requests straight into this form; a parsed ``Input`` (warmup
    records) is serialized and read back, as TF Serving's util.cc does.
    """
    if model_input.DESCRIPTOR.full_name == wire_protos.SerializedInput.DESCRIPTOR.full_name:
        return model_input
    return wire_protos.SerializedInput.FromString(model_input.SerializeToString())


def serialized_examples(model_input) -> np.ndarray:
    """``Input`` -> [N] serialized tf.Examples, context bytes prepended to each candidate.

    Byte concatenation is what TF Serving does (util.cc InputToSerializedExampleTensor): parsing
    the concatenation merges the two Examples, a candidate feature overriding the context's.
    The candidates' bytes are the client's own: no Example is parsed or re-serialized here.
    """
    model_input = serialized_input(model_input)
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
    elif kind == "example_list_with_context":
        context = b"".join(model_input.example_list_with_context.context)
        examples = [context + e for e in model_input.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise status.invalid_argument("Input is empty.")
    return np.array(examples, dtype=object)


def _signature(servable, model_spec, missing_signature_error):
    signature_name = model_spec.signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(signature_name)
    if signature is None:
        raise missing_signature_error(signature_name)
    return signature_name, signature


def _fill_model_spec(spec, servable, signature_name):
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


def predict(servable, request, run: Run = run_directly) -> "predict_pb2.PredictResponse":
    # TF Serving answers a missing signature differently per API (predict_util.cc vs regressor.cc).
    signature_name, signature = _signature(
        servable, request.model_spec,
        lambda name: status.failed_precondition(f'Serving signature key "{name}" not found.'))
    sent, expected = set(request.inputs), set(signature.inputs)
    if sent != expected:
        raise status.invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise status.invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(signature.outputs))}}}.")
    inputs = {alias: to_ndarray(tensor, alias) for alias, tensor in request.inputs.items()}
    outputs = run(servable, signature_name, inputs)
    response = predict_pb2.PredictResponse()
    _fill_model_spec(response.model_spec, servable, signature_name)
    for alias in (request.output_filter or outputs):
        response.outputs[alias].CopyFrom(to_tensor_proto(outputs[alias]))
    return response


def regress(servable, request, run: Run = run_directly) -> "regression_pb2.RegressionResponse":
    signature_name, signature = _signature(
        servable, request.model_spec,
        lambda name: status.invalid_argument(f"No signature was found with the name: {name}"))
    if len(signature.inputs) != 1:
        raise status.invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise status.invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise status.invalid_argument(f"No regression inputs found in SignatureDef: {signature_name}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise status.invalid_argument(f"No regression outputs found in SignatureDef: {signature_name}")
    examples = serialized_examples(request.input)
    values = run(servable, signature_name, {REGRESS_INPUTS: examples})[REGRESS_OUTPUTS]
    if values.dtype != np.float32:
        raise status.invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
    if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] != 1):
        raise status.invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                                      f"[batch_size, 1] but got {list(values.shape)}")
    if values.shape[0] != len(examples):
        raise status.invalid_argument("Input batch size did not match output batch size: "
                                      f"{len(examples)} vs. {values.shape[0]}")
    response = regression_pb2.RegressionResponse()
    _fill_model_spec(response.model_spec, servable, signature_name)
    regressions = response.result.regressions
    for value in values.reshape(-1).tolist():
        regressions.add(value=value)
    return response


def check_metadata_fields(request) -> None:
    """TF Serving checks the fields before it looks the model up."""
    if not request.metadata_field:
        raise status.invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise status.invalid_argument(f"Metadata field {field} is not supported")


def model_metadata(servable, request) -> "get_model_metadata_pb2.GetModelMetadataResponse":
    check_metadata_fields(request)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response
