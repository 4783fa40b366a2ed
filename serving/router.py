"""The canary router: a ``PredictionService`` proxy that picks the version label per user.

For Predict and Regress it reads the domain and user (``routing_keys``), asks the
``CanaryPolicy`` for the arm, sets ``model_spec.version_label`` to it, forwards to the backend
(real TF Serving in production, the embedded model server here) and answers the backend's
response bytes unchanged, adding trailing metadata ``x-crocodile-arm`` and
``x-crocodile-version``. A request that already names a version or label is forwarded as is
(debugging, ``crocodile score --label``) and logged with that arm.

When the canary fails for a serving reason (label or version not loaded, backend unavailable,
internal error) and the policy says ``fallback``, the same request is answered by stable and
counted; client errors (INVALID_ARGUMENT from the graph, oversized requests) are never
retried. GetModelMetadata is passed through; Classify and MultiInference are UNIMPLEMENTED.
"""
import logging
import threading
import time
import uuid
from concurrent import futures
from typing import Callable, Optional

import grpc
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import predict_pb2, regression_pb2

from crocodile.serving import routing_keys, status
from crocodile.serving.policy import CANARY, FAIL, STABLE, CanaryPolicy
from crocodile.serving.router_telemetry import ExposureLog, RouterMetrics

log = logging.getLogger(__name__)

SERVICE = "tensorflow.serving.PredictionService"
ARM_HEADER, VERSION_HEADER = "x-crocodile-arm", "x-crocodile-version"
DEFAULT_BACKEND_TIMEOUT_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit, as TF Serving's
# Backend failures that mean "the canary cannot serve", not "the request is bad".
CANARY_FAILURE_CODES = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
UNKNOWN_LABEL_MESSAGE = "Unrecognized servable version label"


def is_canary_failure(error: grpc.RpcError) -> bool:
    code = error.code()
    return code in CANARY_FAILURE_CODES or (
        code == grpc.StatusCode.INVALID_ARGUMENT and (error.details() or "").startswith(UNKNOWN_LABEL_MESSAGE))


class Router:
    def __init__(self, backend: str, policy: CanaryPolicy, model_name: str = "crocodile",
                 exposure_log: Optional[str] = None, metrics: Optional[RouterMetrics] = None,
                 backend_timeout_s: float = DEFAULT_BACKEND_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.policy = policy
        self.model_name = model_name
        self.metrics = metrics or RouterMetrics()
        self.exposure_log = ExposureLog(exposure_log) if exposure_log else None
        self.backend_timeout_s = backend_timeout_s
        message_options = [("grpc.max_receive_message_length", max_message_bytes),
                           ("grpc.max_send_message_length", max_message_bytes)]
        self.message_options = message_options
        self._channel = grpc.insecure_channel(backend, options=message_options)
        self._calls = {name: self._channel.unary_unary(f"/{SERVICE}/{name}")
                       for name in ("Predict", "Regress", "GetModelMetadata")}
        self._inflight = 0
        self._idle = threading.Condition()

    # --- gRPC wiring ---------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        def raw(fn):  # bytes in, bytes out: the router parses only what it needs
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Predict": raw(lambda body, ctx: self._route("Predict", body, ctx, predict_pb2.PredictRequest,
                                                         predict_pb2.PredictResponse,
                                                         routing_keys.key_from_predict)),
            "Regress": raw(lambda body, ctx: self._route("Regress", body, ctx, regression_pb2.RegressionRequest,
                                                         regression_pb2.RegressionResponse,
                                                         routing_keys.key_from_regress)),
            "GetModelMetadata": raw(self._pass_through_metadata),
        })

    def _forward(self, method: str, body: bytes, context, metadata) -> bytes:
        remaining = context.time_remaining()
        timeout = self.backend_timeout_s if remaining is None else min(remaining, self.backend_timeout_s)
        return self._calls[method](body, timeout=timeout, metadata=metadata)

    def _pass_through_metadata(self, body, context):
        try:
            return self._forward("GetModelMetadata", body, context, None)
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())

    # --- routing -------------------------------------------------------------------------
    def _route(self, method: str, body: bytes, context, request_cls, response_cls,
               key_from_request: Callable) -> bytes:
        started = time.perf_counter()
        metadata = dict(context.invocation_metadata())
        request_id = metadata.get(routing_keys.REQUEST_ID_HEADER) or uuid.uuid4().hex
        record = {"request_id": request_id, "method": method, "user": None, "domain": None,
                  "arm": None, "version": None, "fallback": False, "status": "OK"}
        with self._idle:
            self._inflight += 1
        try:
            return self._answer(method, body, context, request_cls, response_cls, key_from_request,
                                metadata, request_id, record)
        except status.ServingError as error:
            record["status"] = error.code.name
            context.abort(error.code, error.message)
        except grpc.RpcError as error:  # the backend's answer, passed on unchanged
            record["status"] = error.code().name
            context.abort(error.code(), error.details())
        except Exception as error:  # a router bug: answer INTERNAL, keep serving, log it
            log.exception("routing %s failed", method)
            record["status"] = grpc.StatusCode.INTERNAL.name
            context.abort(grpc.StatusCode.INTERNAL, f"router: {type(error).__name__}: {error}")
        finally:
            seconds = time.perf_counter() - started
            record.update(time=time.time(), latency_ms=round(seconds * 1e3, 3))
            self.metrics.record(method, record["arm"] or "none", self.policy.domain_label(record["domain"]),
                                record["status"], seconds)
            if self.exposure_log is not None:
                self.exposure_log.write(record)
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _answer(self, method, body, context, request_cls, response_cls, key_from_request, metadata,
                request_id, record) -> bytes:
        try:
            request = request_cls.FromString(body)
        except DecodeError:
            raise status.invalid_argument(
                f"request body is not a valid {request_cls.DESCRIPTOR.full_name} ({len(body)} bytes)") from None
        spec = request.model_spec
        if not spec.name:
            raise status.invalid_argument("ModelSpec has no name specified.")
        if spec.name != self.model_name:
            raise status.not_found(f"Servable not found for request: model '{spec.name}' "
                                   f"(this router serves '{self.model_name}')")
        key = routing_keys.merge_keys(key_from_request(request), routing_keys.key_from_metadata(metadata))
        domain, user = routing_keys.require_key(key)
        record.update(domain=domain, user=user)
        forward_metadata = ((routing_keys.REQUEST_ID_HEADER, request_id),)
        explicit = spec.WhichOneof("version_choice")
        if explicit is not None:  # the client chose: no assignment, no fallback
            arm = spec.version_label if explicit == "version_label" else f"version-{spec.version.value}"
            record["arm"] = arm
            response_body = self._forward(method, body, context, forward_metadata)
        else:
            arm = self.policy.arm_for(domain, user)
            record["arm"] = arm
            spec.version_label = arm
            try:
                response_body = self._forward(method, request.SerializeToString(), context, forward_metadata)
            except grpc.RpcError as error:
                if arm != CANARY or self.policy.on_canary_failure == FAIL or not is_canary_failure(error):
                    raise
                log.warning("canary failed (%s: %s); answering from stable", error.code().name, error.details())
                self.metrics.fallbacks.labels(self.policy.domain_label(domain), error.code().name).inc()
                arm = STABLE
                record.update(arm=arm, fallback=True)
                spec.version_label = arm
                response_body = self._forward(method, request.SerializeToString(), context, forward_metadata)
        version = response_cls.FromString(response_body).model_spec.version.value
        record["version"] = version
        context.set_trailing_metadata(((ARM_HEADER, arm), (VERSION_HEADER, str(version))))
        return response_body

    # --- lifecycle -----------------------------------------------------------------------
    def drain(self, timeout_s: float) -> bool:
        """Waits until no request is in flight; True when drained within the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        if self.exposure_log is not None:
            self.exposure_log.close()
        self._channel.close()


def build_router_server(router: Router, port: int, host: str = "[::]", max_threads: int = 64):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="router"),
                         options=router.message_options)
    server.add_generic_rpc_handlers((router.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on port {port}")
    return server, bound


def shutdown(server: grpc.Server, router: Router, grace_s: float = 10.0) -> None:
    """Graceful stop: refuse new calls, let in-flight ones finish, then flush and close the log."""
    stopped = server.stop(grace_s)
    router.drain(grace_s)
    stopped.wait(grace_s)
    router.close()
