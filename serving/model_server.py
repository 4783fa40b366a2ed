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
import os
from concurrent import futures
from typing import Dict, Optional

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from crocodile.serving import inference, status, wire_protos
from crocodile.serving.batching import BatchingOptions, BatchScheduler
from crocodile.serving.grpc_listen import listen
from crocodile.serving.server_core import ServerCore

log = logging.getLogger(__name__)

# tensorflow::kint32max: TF Serving's ServerBuilder::SetMaxMessageSize (server.cc), 2 GB.
MAX_MESSAGE_BYTES = 2**31 - 1
# Service names TF Serving registers with --enable_grpc_healthcheck_service (server.cc); the
# overall server ("") is SERVING too, as in gRPC's default health service.
HEALTH_SERVICES = ("", "ModelService", "PredictionService")


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


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServerCore, scheduler: Optional[BatchScheduler] = None):
        self.core = core
        self.scheduler = scheduler
        self._run = self._run_batched if scheduler is not None else inference.run_directly

    def _run_batched(self, servable, signature_name: str, inputs: Dict[str, np.ndarray]):
        size = int(np.shape(next(iter(inputs.values())))[0]) if inputs else 0
        return self.scheduler.submit((servable.name, servable.version, signature_name),
                                     functools.partial(servable.run, signature_name), inputs, size)

    @_answers_grpc_status
    def Predict(self, request, context):
        return inference.predict(self.core.resolve(request.model_spec), request, self._run)

    @_answers_grpc_status
    def Regress(self, request, context):
        return inference.regress(self.core.resolve(request.model_spec), request, self._run)

    @_answers_grpc_status
    def GetModelMetadata(self, request, context):
        inference.check_metadata_fields(request)
        return inference.model_metadata(self.core.resolve(request.model_spec), request)


PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
# method -> (request parser, response class). As the generated add_PredictionServiceServicer_to_server,
# except that a Regress request is parsed with its Examples left as bytes (TF Serving's SerializedInput):
# the model takes serialized Examples, so parsing 100 candidates only to serialize them again is
# wasted work (measured: benchmarks/model_server_latency.py). A body that is no RegressionRequest
# still fails in gRPC's deserialization (INTERNAL), as with the generated servicer.
_PREDICTION_METHODS = {
    "Classify": (classification_pb2.ClassificationRequest.FromString, classification_pb2.ClassificationResponse),
    "Regress": (wire_protos.SerializedRegressionRequest.FromString, regression_pb2.RegressionResponse),
    "Predict": (predict_pb2.PredictRequest.FromString, predict_pb2.PredictResponse),
    "MultiInference": (inference_pb2.MultiInferenceRequest.FromString, inference_pb2.MultiInferenceResponse),
    "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest.FromString,
                         get_model_metadata_pb2.GetModelMetadataResponse),
}


def prediction_service_handler(servicer: PredictionServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(PREDICTION_SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=parse,
                                                  response_serializer=response_class.SerializeToString)
        for name, (parse, response_class) in _PREDICTION_METHODS.items()})


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
        for number, state, code, message in self.core.version_states(spec.name, version):
            entry = response.model_version_status.add(version=number, state=state)
            entry.status.error_code = code.value[0]
            entry.status.error_message = message
        return response

    @_answers_grpc_status
    def HandleReloadConfigRequest(self, request, context):
        self.core.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse()


# TF Serving's --grpc_max_threads default: 4 x the schedulable CPUs (server.h).
DEFAULT_GRPC_MAX_THREADS = 4 * (os.cpu_count() or 1)


def parse_grpc_channel_arguments(text: str):
    """TF Serving's --grpc_channel_arguments: 'key=value,key=value' (ints stay ints)."""
    options = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        options.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return options


def build_server(core: ServerCore, port: int, batching: Optional[BatchingOptions] = None, grpc_options=(),
                 max_threads: int = DEFAULT_GRPC_MAX_THREADS, host: str = "[::]",
                 enable_grpc_healthcheck_service: bool = False, grpc_socket_path: str = ""):
    """A started-ready grpc.Server (call .start()) and its bound port, plus the batch scheduler.

    Messages up to 2 GB are accepted, as TF Serving's; ``grpc_options`` (--grpc_channel_arguments)
    come after that default and so can lower it. With ``enable_grpc_healthcheck_service``,
    ``grpc.health.v1.Health`` answers SERVING for "", "ModelService" and "PredictionService".
    With ``grpc_socket_path`` (TF Serving's --grpc_socket_path) the server also listens on that UNIX
    socket: a co-located router reaches it without the TCP stack.
    """
    scheduler = BatchScheduler(batching) if batching is not None else None
    options = list(grpc_options)
    if not any(key == "grpc.max_receive_message_length" for key, _ in options):  # gRPC keeps the first
        options.append(("grpc.max_receive_message_length", MAX_MESSAGE_BYTES))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
                         options=options)
    server.add_generic_rpc_handlers((prediction_service_handler(PredictionServicer(core, scheduler)),))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    if enable_grpc_healthcheck_service:
        health_servicer = health.HealthServicer()
        for service in HEALTH_SERVICES:
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.health_servicer = health_servicer  # NOT_SERVING from the start of a drain (cli)
    bound_port = listen(server, f"{host}:{port}", f"port {port}")
    if grpc_socket_path:  # gRPC replaces a stale socket there, never another file
        listen(server, f"unix:{grpc_socket_path}",
               f"UNIX socket {grpc_socket_path} (--grpc_socket_path): its folder must exist and the path "
               "must not be a file other than a socket")
    return server, bound_port, scheduler
