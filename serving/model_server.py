"""The embedded model server: TF Serving's gRPC API over SavedModels loaded with TensorFlow.

A stand-in for ``tensorflow_model_server`` where its binary cannot run. It implements
``PredictionService`` (Predict, Regress, GetModelMetadata) and ``ModelService``
(GetModelStatus, HandleReloadConfigRequest) from ``tensorflow_serving.apis`` with TF
Serving's request checks, messages and status codes (tensorflow_serving/servables/tensorflow/
predict_util.cc, regressor.cc, util.cc, get_model_metadata_impl.cc; model_servers/
get_model_status_impl.cc, model_service_impl.cc). Classify and MultiInference are not
served (the project's models have no classification signature): UNIMPLEMENTED.
"""
import functools
import logging
from concurrent import futures
from typing import Dict, Optional

import grpc
import numpy as np
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                     regression_pb2)

from crocodile.serving import status
from crocodile.serving.batching import BatchingOptions, BatchScheduler
from crocodile.serving.server_core import ServerCore
from crocodile.serving.tensor_protos import to_ndarray, to_tensor_proto

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"
SIGNATURE_DEF_FIELD = "signature_def"


def _answers_grpc_status(method):
    """Turns ServingError into the gRPC status; anything unexpected is INTERNAL and logged."""
    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except status.ServingError as error:
            context.abort(error.code, error.message)
        except Exception as error:  # keep serving; the client learns what broke
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
    return wrapper


def serialized_examples(model_input) -> np.ndarray:
    """``Input`` -> [N] serialized tf.Examples, context bytes prepended to each candidate.

    Byte concatenation is what TF Serving does (util.cc InputToSerializedExampleTensor): parsing
    the concatenation merges the two Examples, a candidate feature overriding the context's.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString()
                    for e in model_input.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise status.invalid_argument("Input is empty.")
    return np.array(examples, dtype=object)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore, scheduler: Optional[BatchScheduler] = None,
                 max_request_examples: Optional[int] = None):
        self.core = core
        self.scheduler = scheduler
        self.max_request_examples = max_request_examples

    def _run(self, servable, signature_name: str, inputs: Dict[str, np.ndarray]):
        size = int(np.shape(next(iter(inputs.values())))[0]) if inputs else 0
        run = functools.partial(servable.run, signature_name)
        if self.scheduler is not None:
            return self.scheduler.submit((servable.name, servable.version, signature_name), run, inputs, size)
        if self.max_request_examples is not None and size > self.max_request_examples:
            raise status.invalid_argument(
                f"Task size {size} is larger than maximum input batch size {self.max_request_examples}")
        return run(inputs)

    def _resolve(self, request, missing_signature_error):
        servable = self.core.resolve(request.model_spec)
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(signature_name)
        if signature is None:
            raise missing_signature_error(signature_name)
        return servable, signature_name, signature

    @staticmethod
    def _fill_model_spec(spec, servable, signature_name):
        spec.name = servable.name
        spec.version.value = servable.version
        spec.signature_name = signature_name

    @_answers_grpc_status
    def Predict(self, request, context):
        # TF Serving answers a missing signature differently per API (predict_util.cc vs regressor.cc).
        servable, signature_name, signature = self._resolve(
            request, lambda name: status.failed_precondition(f'Serving signature key "{name}" not found.'))
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
        outputs = self._run(servable, signature_name, inputs)
        response = predict_pb2.PredictResponse()
        self._fill_model_spec(response.model_spec, servable, signature_name)
        for alias in (request.output_filter or outputs):
            response.outputs[alias].CopyFrom(to_tensor_proto(outputs[alias]))
        return response

    @_answers_grpc_status
    def Regress(self, request, context):
        servable, signature_name, signature = self._resolve(
            request, lambda name: status.invalid_argument(f"No signature was found with the name: {name}"))
        if len(signature.inputs) != 1:
            raise status.invalid_argument("Expected one input Tensor.")
        if len(signature.outputs) != 1:
            raise status.invalid_argument("Expected one output Tensor.")
        if REGRESS_INPUTS not in signature.inputs:
            raise status.invalid_argument(f"No regression inputs found in SignatureDef: {signature_name}")
        if REGRESS_OUTPUTS not in signature.outputs:
            raise status.invalid_argument(f"No regression outputs found in SignatureDef: {signature_name}")
        examples = serialized_examples(request.input)
        values = self._run(servable, signature_name, {REGRESS_INPUTS: examples})[REGRESS_OUTPUTS]
        if values.dtype != np.float32:
            raise status.invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
        if values.ndim not in (1, 2) or (values.ndim == 2 and values.shape[1] != 1):
            raise status.invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                                          f"[batch_size, 1] but got {list(values.shape)}")
        if values.shape[0] != len(examples):
            raise status.invalid_argument("Input batch size did not match output batch size: "
                                          f"{len(examples)} vs. {values.shape[0]}")
        response = regression_pb2.RegressionResponse()
        self._fill_model_spec(response.model_spec, servable, signature_name)
        for value in values.reshape(-1).tolist():
            response.result.regressions.add(value=value)
        return response

    @_answers_grpc_status
    def GetModelMetadata(self, request, context):
        if not request.metadata_field:
            raise status.invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise status.invalid_argument(f"Metadata field {field} is not supported")
        servable = self.core.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    @_answers_grpc_status
    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            raise status.invalid_argument("Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state, message in self.core.version_states(spec.name, version):
            entry = response.model_version_status.add(version=number, state=state)
            if message:
                entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                entry.status.error_message = message
        return response

    @_answers_grpc_status
    def HandleReloadConfigRequest(self, request, context):
        self.core.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse()


def parse_grpc_channel_arguments(text: str):
    """TF Serving's --grpc_channel_arguments: 'key=value,key=value' (ints stay ints)."""
    options = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        options.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return options


def build_server(core: ServerCore, port: int, batching: Optional[BatchingOptions] = None,
                 max_request_examples: Optional[int] = None, grpc_options=(), max_threads: int = 64,
                 host: str = "[::]"):
    """A started-ready grpc.Server (call .start()) and its bound port, plus the batch scheduler."""
    scheduler = BatchScheduler(batching) if batching is not None else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
                         options=list(grpc_options))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(core, scheduler, max_request_examples), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    bound_port = server.add_insecure_port(f"{host}:{port}")
    if bound_port == 0:
        raise OSError(f"cannot listen on port {port}")
    return server, bound_port, scheduler
