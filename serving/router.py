"""The canary router: a ``PredictionService`` proxy that picks the arm per user.

For Predict and Regress it reads the model spec and the domain and user (``routing_keys``) from a
routing view of the request (``wire_protos``: the candidates stay unparsed bytes), asks the
``CanaryPolicy`` for the arm, and forwards the client's bytes unchanged plus one appended
``model_spec`` field holding only ``version_label``: protobuf parsers merge repeated occurrences of
an embedded message field, so the backend sees the client's spec with the label set, and the
router never re-serializes a request. It reads the answering version from a view of the response
and returns the backend's bytes unchanged, with trailing metadata ``x-crocodile-arm`` (served arm)
and ``x-crocodile-version``.

A request that names a version or label itself is refused (PERMISSION_DENIED) unless the policy
sets ``allow_client_version``. When the canary fails for a serving reason (label or version not
loaded, backend unavailable, internal error) and the policy says ``fallback``, stable answers and
the record says so; client errors (INVALID_ARGUMENT from the graph, oversized requests) are never
retried. The canary's calls feed the policy's circuit breaker (``canary_breaker``); once it trips,
every user is assigned to stable until the policy changes (reload with a different file).
GetModelMetadata is passed through; other PredictionService methods are UNIMPLEMENTED.

The server is gRPC's synchronous server: a request costs one hand-off (gRPC's polling thread to a
handler thread), and the handler's blocking backend call polls its own completion queue. (grpc.aio
was measured as a bare byte-forwarding hop in the same rounds as the sync one, in front of the
model server: p50 and throughput within noise of the sync hop; see serving/README.md and
benchmarks/serving_latency.py.) Backends get one
channel each, metrics and the exposure log are written by the telemetry thread
(``router_telemetry``), and ``maximum_concurrent_rpcs`` bounds the requests in flight: beyond it
gRPC answers RESOURCE_EXHAUSTED at once instead of queueing without bound.

The same request path, compiled, can run in front of this router (``native_router``,
``crocodile router --data-plane native``): then this router is its control plane and slow path.
"""
import dataclasses
import json
import logging
import threading
import time
import uuid
from concurrent import futures
from typing import Dict, Optional

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from crocodile.errors import UserError
from crocodile.serving import routing_keys, status
from crocodile.serving.canary_breaker import CanaryBreaker
from crocodile.serving.grpc_listen import listen
from crocodile.serving.policy import CANARY, FAIL, STABLE, CanaryPolicy
from crocodile.serving.router_security import AUTHORIZATION_HEADER, TokenCheck, UserIdHasher
from crocodile.serving.router_telemetry import RouterMetrics, Telemetry
from crocodile.serving.wire_protos import (ModelSpec, ModelSpecView, PredictRequestView, RegressionRequestView,
                                           ResponseView, length_delimited_field)

log = logging.getLogger(__name__)

SERVICE = "tensorflow.serving.PredictionService"
CANARY_HEALTH_SERVICE = "crocodile.router.canary"  # NOT_SERVING while the canary is aborted or unresolved
HEALTH_DETAIL_HEADER = "x-crocodile-health-detail"
ARM_HEADER, VERSION_HEADER = "x-crocodile-arm", "x-crocodile-version"
CLIENT_ARM = "client"  # the arm label of a client-chosen version (policy allow_client_version)
DEFAULT_BACKEND_TIMEOUT_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit
DEFAULT_MAX_CONCURRENT_RPCS = 512
DEFAULT_THREADS = 64
DEFAULT_HEALTH_INTERVAL_S = 2.0
# Reconnect quickly to a restarted backend (gRPC's default backoff grows to 120 s). Calls to stable,
# the last resort, wait for a connection (up to the deadline); calls to the canary fail at once
# while it is unreachable, so its fallback costs no waiting.
BACKEND_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                           ("grpc.max_reconnect_backoff_ms", 1000))
# Backend failures that mean "the canary cannot serve", not "the request is bad". CANCELLED here is
# the backend's (a server stopping mid-call); a client's own cancellation never reaches this code.
CANARY_FAILURE_CODES = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED}
UNKNOWN_LABEL_MESSAGE = "Unrecognized servable version label"


def is_canary_failure(error: grpc.RpcError) -> bool:
    code = error.code()
    return code in CANARY_FAILURE_CODES or (
        code == grpc.StatusCode.INVALID_ARGUMENT and (error.details() or "").startswith(UNKNOWN_LABEL_MESSAGE))


def label_override(label: str) -> bytes:
    """A ``model_spec`` field (1 in every request) with only ``version_label``, to append to a request."""
    return length_delimited_field(1, ModelSpec(version_label=label).SerializeToString())


_OVERRIDE = {STABLE: label_override(STABLE), CANARY: label_override(CANARY)}


@dataclasses.dataclass(frozen=True)
class RouterState:
    """What a request runs under; replaced as a whole on a policy change (atomic for readers)."""
    policy: CanaryPolicy
    breaker: CanaryBreaker
    source: str


@dataclasses.dataclass(frozen=True)
class BackendTls:
    root_certificates: Optional[bytes] = None  # None: the system's roots
    server_name: Optional[str] = None  # overrides the name checked against the certificate


class Router:
    def __init__(self, backend: str, policy: CanaryPolicy, model_name: str = "crocodile",
                 exposure_log: Optional[str] = None, metrics: Optional[RouterMetrics] = None,
                 backend_timeout_s: float = DEFAULT_BACKEND_TIMEOUT_S,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, canary_backend: Optional[str] = None,
                 backend_tls: Optional[BackendTls] = None, auth_tokens=None, user_id_salt: Optional[bytes] = None,
                 policy_path: Optional[str] = None, health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S):
        self.model_name = model_name
        self.backends = {STABLE: backend, CANARY: canary_backend or backend}
        self.backend_timeout_s = backend_timeout_s
        self.backend_tls = backend_tls
        self.message_options = [("grpc.max_receive_message_length", max_message_bytes),
                                ("grpc.max_send_message_length", max_message_bytes)]
        self.metrics = metrics or RouterMetrics()
        self.telemetry = Telemetry(self.metrics, exposure_log, on_abort=self._on_abort)
        self.auth_tokens = frozenset(auth_tokens or ())
        self._token_check = TokenCheck(auth_tokens) if auth_tokens else None
        self.user_id_hasher = UserIdHasher(user_id_salt) if user_id_salt else None
        self.policy_path = policy_path
        self._state = RouterState(policy, CanaryBreaker(policy.canary_abort), policy_path or "given")
        self._reload_lock = threading.Lock()
        self.health_interval_s = health_interval_s
        self.health_detail: Dict[str, object] = {"experiment": policy.experiment, "labels": {},
                                                 "backends": dict(self.backends), "canary_aborted": None,
                                                 "policy": policy_path or "given"}
        self.health = _DetailedHealthServicer(self)
        for service in ("", SERVICE, CANARY_HEALTH_SERVICE):  # until the first probe has answered
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._health_wake = threading.Event()
        self._health_stop = threading.Event()
        self._health_thread = None
        self._calls = {}  # (arm, method) -> multi-callable on that arm's backend channel
        # A data plane in front of this router (native_router) follows policy changes and aborts
        # through state_listeners, and hands its records over before a flush through record_sources.
        self.state_listeners = []
        self.record_sources = []
        self._open_channels()

    @property
    def policy(self) -> CanaryPolicy:
        return self._state.policy

    @property
    def state(self) -> RouterState:
        return self._state

    def submit_record(self, record: dict) -> None:
        """Hands one request's record to the telemetry, the user id hashed when a salt is set."""
        if self.user_id_hasher is not None and record["user"] is not None:
            record["user_hash"] = self.user_id_hasher(record.pop("user"))
        self.telemetry.submit(record)

    @property
    def canary_aborted(self) -> Optional[str]:
        return self._state.breaker.tripped

    # --- policy reload -------------------------------------------------------------------
    def reload_policy(self, path: Optional[str] = None) -> bool:
        """Re-reads the policy file; True when the policy changed. A bad file keeps the old policy."""
        path = path or self.policy_path
        with self._reload_lock:
            old = self._state
            try:
                policy = CanaryPolicy.load(path)
            except UserError as error:
                log.error("policy reload rejected, keeping experiment %s from %s: %s", old.policy.experiment,
                          old.source, error)
                return False
            if policy == old.policy:
                log.info("policy file %s re-read: unchanged%s", path,
                         f"; canary stays aborted ({old.breaker.tripped})" if old.breaker.tripped else "")
                return False
            self._state = RouterState(policy, CanaryBreaker(policy.canary_abort), path)
            self.metrics.canary_aborted.labels(old.policy.experiment).set(0)
            for listener in self.state_listeners:
                listener(self._state)
            log.info("policy reloaded from %s: experiment %s, default share %s, domains %s, canary_abort %s",
                     path, policy.experiment, policy.default_canary_share, policy.domains, policy.canary_abort)
            self._schedule_health_update()
            return True

    def _on_abort(self, state: RouterState, reason: str) -> None:
        for listener in self.state_listeners:
            listener(state)
        self._schedule_health_update()

    # --- gRPC wiring ----------------------------------------------------------------------
    def _open_channels(self) -> None:
        channels = {}
        for arm, target in self.backends.items():
            if target not in channels:
                options = list(self.message_options) + list(BACKEND_CHANNEL_OPTIONS)
                if self.backend_tls is None:
                    channels[target] = grpc.insecure_channel(target, options=options)
                else:
                    if self.backend_tls.server_name:
                        options.append(("grpc.ssl_target_name_override", self.backend_tls.server_name))
                    credentials = grpc.ssl_channel_credentials(root_certificates=self.backend_tls.root_certificates)
                    channels[target] = grpc.secure_channel(target, credentials, options=options)
            for method in ("Predict", "Regress", "GetModelMetadata"):
                self._calls[(arm, method)] = channels[target].unary_unary(f"/{SERVICE}/{method}")
        self._channels = list(channels.values())

    def handler(self) -> grpc.GenericRpcHandler:
        def raw(fn):  # bytes in, bytes out: the router parses only what it needs
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Predict": raw(self._predict), "Regress": raw(self._regress),
            "GetModelMetadata": raw(self._pass_through_metadata)})

    def _predict(self, body, context):
        return self._route("Predict", body, context, PredictRequestView, routing_keys.key_from_predict)

    def _regress(self, body, context):
        return self._route("Regress", body, context, RegressionRequestView, routing_keys.key_from_regress)

    def _timeout(self, context) -> float:
        remaining = context.time_remaining()
        return self.backend_timeout_s if remaining is None else min(remaining, self.backend_timeout_s)

    def _authorize(self, metadata: dict) -> None:
        if self._token_check is not None and not self._token_check.allows(metadata.get(AUTHORIZATION_HEADER)):
            raise status.ServingError(grpc.StatusCode.UNAUTHENTICATED,
                                      "missing or wrong 'authorization: Bearer <token>' metadata")

    def _pass_through_metadata(self, body, context):
        try:
            self._authorize(dict(context.invocation_metadata() or ()))
            try:
                spec = ModelSpecView.FromString(body).model_spec
            except DecodeError:
                raise status.invalid_argument("request body is not a valid GetModelMetadataRequest") from None
            arm = CANARY if spec.version_label == CANARY else STABLE
            return self._calls[(arm, "GetModelMetadata")](body, timeout=self._timeout(context))
        except status.ServingError as error:
            code, details = error.code, error.message
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        context.abort(code, details)

    # --- routing -------------------------------------------------------------------------
    def _route(self, method: str, body: bytes, context, view_class, key_from_request) -> bytes:
        started = time.perf_counter()
        state = self._state
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get(routing_keys.REQUEST_ID_HEADER) or uuid.uuid4().hex
        record = {"time": None, "request_id": request_id, "method": method, "experiment": state.policy.experiment,
                  "user": None, "domain": None, "assigned_arm": None, "served_arm": None, "arm": None,
                  "version": None, "fallback": False, "status": "OK", "_state": state, "_canary_call": None}
        code = None
        try:
            return self._answer(method, body, context, view_class, key_from_request, metadata, request_id,
                                      state, record)
        except status.ServingError as error:
            code, details = error.code, error.message
        except grpc.RpcError as error:  # the backend's answer, passed on unchanged
            code, details = error.code(), error.details()
        except Exception as error:  # a router bug: answer INTERNAL, keep serving, log it
            log.exception("routing %s failed", method)
            code, details = grpc.StatusCode.INTERNAL, f"router: {type(error).__name__}: {error}"
        finally:
            seconds = time.perf_counter() - started
            if code is not None:
                record["status"] = code.name
            record.update(time=time.time(), latency_ms=round(seconds * 1e3, 3), _seconds=seconds,
                          _domain_label=state.policy.domain_label(record["domain"]))
            self.submit_record(record)
        context.abort(code, details)

    def _answer(self, method, body, context, view_class, key_from_request, metadata, request_id, state,
                      record) -> bytes:
        self._authorize(metadata)
        try:
            request = view_class.FromString(body)
        except DecodeError:
            raise status.invalid_argument(f"request body is not a valid tensorflow.serving.{method}"
                                          f"{'Request' if method == 'Predict' else 'ionRequest'} "
                                          f"({len(body)} bytes)") from None
        spec = request.model_spec
        if not spec.name:
            raise status.invalid_argument("ModelSpec has no name specified.")
        if spec.name != self.model_name:
            raise status.not_found(f"Servable not found for request: model '{spec.name}' "
                                   f"(this router serves '{self.model_name}')")
        key = routing_keys.merge_keys(key_from_request(request), routing_keys.key_from_metadata(metadata))
        domain, user = routing_keys.require_key(key)
        record["domain"], record["user"] = domain, user
        forward_metadata = ((routing_keys.REQUEST_ID_HEADER, request_id),)
        timeout = self._timeout(context)
        explicit = spec.WhichOneof("version_choice")
        if explicit is not None:
            if not state.policy.allow_client_version:
                chosen = (f"version_label '{spec.version_label}'" if explicit == "version_label"
                          else f"version {spec.version.value}")
                raise status.ServingError(grpc.StatusCode.PERMISSION_DENIED,
                                          f"the request names {chosen}: this router assigns the version itself "
                                          f"(experiment {state.policy.experiment}); clear model_spec.version / "
                                          f"version_label, or set allow_client_version: true in the policy")
            served = spec.version_label if spec.version_label in (STABLE, CANARY) else CLIENT_ARM
            record.update(assigned_arm=CLIENT_ARM, arm=CLIENT_ARM, served_arm=served)
            response = self._calls[(CANARY if served == CANARY else STABLE, method)](
                body, timeout=timeout, metadata=forward_metadata)
        else:
            assigned = CANARY if state.breaker.tripped is None and state.policy.is_canary(domain, user) else STABLE
            record.update(assigned_arm=assigned, arm=assigned, served_arm=assigned)
            if assigned == STABLE:
                response = self._calls[(STABLE, method)](body + _OVERRIDE[STABLE], timeout=timeout,
                                                               metadata=forward_metadata, wait_for_ready=True)
            else:
                response = self._call_canary(method, body, timeout, forward_metadata, state, record)
        version = ResponseView.FromString(response).model_spec.version.value
        record["version"] = version
        context.set_trailing_metadata(((ARM_HEADER, record["served_arm"]), (VERSION_HEADER, str(version))))
        return response

    def _call_canary(self, method, body, timeout, forward_metadata, state, record) -> bytes:
        started = time.perf_counter()
        try:
            response = self._calls[(CANARY, method)](body + _OVERRIDE[CANARY], timeout=timeout,
                                                           metadata=forward_metadata)
        except grpc.RpcError as error:
            failure = is_canary_failure(error)
            if failure:  # the canary could not serve: counts against it in the breaker
                record["_canary_call"] = (True, (time.perf_counter() - started) * 1e3)
            if state.policy.on_canary_failure == FAIL or not failure:
                raise
            record.update(served_arm=STABLE, fallback=True, _canary_error=error.code().name,
                          canary_error=f"{error.code().name}: {error.details()}")
            return self._calls[(STABLE, method)](body + _OVERRIDE[STABLE], timeout=timeout,
                                                        metadata=forward_metadata, wait_for_ready=True)
        record["_canary_call"] = (False, (time.perf_counter() - started) * 1e3)
        return response

    # --- health --------------------------------------------------------------------------
    def probe_backends(self) -> None:
        """Sets grpc.health.v1: SERVING when the backend answers and both labels resolve."""
        results = {}
        for arm in (STABLE, CANARY):
            request = (length_delimited_field(1, ModelSpec(name=self.model_name, version_label=arm).SerializeToString())
                       + length_delimited_field(2, b"signature_def"))
            try:
                answer = self._calls[(arm, "GetModelMetadata")](request, timeout=min(2.0, self.backend_timeout_s))
                results[arm] = f"version {ModelSpecView.FromString(answer).model_spec.version.value}"  # field 1 here
            except grpc.RpcError as error:
                results[arm] = f"{error.code().name}: {error.details()}"
        ok = all(value.startswith("version ") for value in results.values())
        aborted = self._state.breaker.tripped
        detail = {"experiment": self._state.policy.experiment, "policy": self._state.source,
                  "backends": dict(self.backends), "labels": results,
                  "canary_aborted": aborted}
        if detail != self.health_detail:
            log.info("health: %s %s", "SERVING" if ok else "NOT_SERVING", json.dumps(detail, sort_keys=True))
        self.health_detail = detail
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        overall = serving if ok else not_serving
        if self._health_stop.is_set():  # shutting down: leave NOT_SERVING in place
            return
        self.health.set("", overall)
        self.health.set(SERVICE, overall)
        canary_ok = results[CANARY].startswith("version ") and aborted is None
        self.health.set(CANARY_HEALTH_SERVICE, serving if canary_ok else not_serving)

    def _schedule_health_update(self) -> None:
        self._health_wake.set()

    def _health_loop(self) -> None:
        while not self._health_stop.is_set():
            try:
                self.probe_backends()
            except Exception:  # keep probing; a probe bug must not kill health reporting
                log.exception("health probe failed")
            self._health_wake.wait(self.health_interval_s)
            self._health_wake.clear()

    def start_health(self) -> None:
        self._health_thread = threading.Thread(target=self._health_loop, name="router-health", daemon=True)
        self._health_thread.start()

    def stop_health(self) -> None:
        self._health_stop.set()
        self._health_wake.set()
        self.health.enter_graceful_shutdown()
        if self._health_thread is not None:
            self._health_thread.join(5.0)

    # --- lifecycle -----------------------------------------------------------------------
    def flush(self) -> None:
        """Returns once metrics, breaker and exposure log reflect every answered request."""
        for deliver in self.record_sources:
            deliver()
        self.telemetry.flush()

    def close(self) -> None:
        self.stop_health()
        self.telemetry.close()
        for channel in self._channels:
            channel.close()


class _DetailedHealthServicer(health.HealthServicer):
    """grpc.health.v1 with the router's reasons in trailing metadata (JSON)."""

    def __init__(self, router: Router):
        super().__init__()
        self._router = router

    def Check(self, request, context):
        context.set_trailing_metadata(((HEALTH_DETAIL_HEADER, json.dumps(self._router.health_detail,
                                                                         sort_keys=True)),))
        return super().Check(request, context)


@dataclasses.dataclass(frozen=True)
class ServerTls:
    certificate_chain: bytes
    private_key: bytes


def build_router_server(router: Router, port: int, host: str = "[::]",
                        max_concurrent_rpcs: Optional[int] = DEFAULT_MAX_CONCURRENT_RPCS,
                        tls: Optional[ServerTls] = None, threads: int = DEFAULT_THREADS,
                        address: Optional[str] = None):
    """The router's gRPC server (not started) and its port. ``router.start_health`` runs on start.
    ``address`` (e.g. ``unix:PATH``) replaces host and port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="router"),
                         options=router.message_options, maximum_concurrent_rpcs=max_concurrent_rpcs)
    server.add_generic_rpc_handlers((router.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(router.health, server)
    credentials = None if tls is None else grpc.ssl_server_credentials(((tls.private_key, tls.certificate_chain),))
    bound = listen(server, address or f"{host}:{port}", address or f"port {port}", credentials)
    started = server.start

    def start():
        started()
        router.start_health()
    server.start = start
    return server, bound


def shutdown(server: grpc.Server, router: Router, grace_s: float = 10.0) -> None:
    """Graceful stop: health NOT_SERVING, refuse new calls, let in-flight ones finish (up to
    ``grace_s``), then write out every queued record and close the channels."""
    router.stop_health()
    server.stop(grace_s).wait(grace_s + 5.0)
    router.close()
