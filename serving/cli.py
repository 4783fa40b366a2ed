"""`crocodile` subcommands of crocodile.serving: model-server, router, score, rollout.

Registered by crocodile.cli. Handlers import TensorFlow, grpcio and the servers lazily so
``crocodile --help`` stays fast. model-server flags carry TF Serving's names and meanings.
"""
import json
import logging
import signal
import threading

from crocodile.errors import UserError

SHUTDOWN_GRACE_S = 10.0


def register(subparsers) -> None:
    server = subparsers.add_parser(
        "model-server", help="embedded stand-in for tensorflow_model_server (gRPC PredictionService + ModelService)")
    server.add_argument("--port", type=int, default=8500, help="gRPC port (0 picks a free one)")
    server.add_argument("--grpc_socket_path", default="",
                        help="also listen for gRPC on this UNIX socket (a co-located router: --backend unix:PATH)")
    server.add_argument("--model_config_file", required=True, help="text ModelServerConfig (model_config_list)")
    server.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0,
                        help="re-read the config file this often (0: never), as TF Serving does")
    server.add_argument("--file_system_poll_wait_seconds", type=int, default=1,
                        help="poll each model's base path for new versions this often (0: once at start)")
    server.add_argument("--max_num_load_retries", type=int, default=5,
                        help="retries of a failed version load before it is reported END with its error")
    server.add_argument("--load_retry_interval_micros", type=int, default=60 * 1000 * 1000,
                        help="wait between load retries")
    server.add_argument("--enable_model_warmup", type=_bool_flag, default=True, nargs="?", const=True,
                        help="replay assets.extra/tf_serving_warmup_requests at load (default true)")
    server.add_argument("--num_request_iterations_for_warmup", type=int, default=0,
                        help="replays per warmup record (used when > 0; else 1)")
    server.add_argument("--enable_batching", type=_bool_flag, default=False, nargs="?", const=True,
                        help="batch concurrent requests")
    server.add_argument("--batching_parameters_file", help="text BatchingParameters (needs --enable_batching)")
    server.add_argument("--allow_version_labels_for_unavailable_models", type=_bool_flag, default=False,
                        nargs="?", const=True,
                        help="let new labels point at versions that are not loaded yet (needed at start-up)")
    server.add_argument("--enable_grpc_healthcheck_service", type=_bool_flag, default=False, nargs="?",
                        const=True, help="serve grpc.health.v1.Health (ModelService, PredictionService)")
    server.add_argument("--tensorflow_session_parallelism", type=int, default=0,
                        help="threads for both TensorFlow op pools (0: see --tensorflow_intra_op_parallelism)")
    server.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads inside one op (0: the stand-in uses 1, see serving/README.md)")
    server.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="ops run concurrently (0: the stand-in uses 1, see serving/README.md)")
    server.add_argument("--grpc_channel_arguments", default="",
                        help="comma-separated key=value gRPC server options, e.g. grpc.max_receive_message_length=65536")
    server.add_argument("--grpc_max_threads", type=int, default=None,
                        help="gRPC handler threads (default 4 x CPUs, as TF Serving)")
    server.set_defaults(handler=run_model_server)

    router = subparsers.add_parser("router", help="canary router: PredictionService proxy choosing stable/canary per user")
    add_router_arguments(router)
    router.set_defaults(handler=run_router)

    score = subparsers.add_parser("score", help="score candidates for one user over gRPC (Regress, ExampleListWithContext)")
    score.add_argument("--target", required=True, help="HOST:PORT of the router or a model server")
    score.add_argument("--domain", type=int, required=True, help="domain id")
    score.add_argument("--user", required=True, help="user id")
    score.add_argument("--items", required=True, help="comma-separated item ids")
    score.add_argument("--features", help='JSON (or @FILE): {"context": {...}, "items": {"ITEM": {...}}}')
    score.add_argument("--label", choices=("stable", "canary"), help="ask for this label instead of the router's choice")
    score.add_argument("--model-name", default="crocodile")
    score.add_argument("--tls", action="store_true", help="TLS to --target (system roots unless --tls-ca)")
    score.add_argument("--tls-ca", help="PEM root certificates for --target (implies --tls)")
    score.add_argument("--tls-server-name", help="name to check in the target's certificate")
    score.add_argument("--token-file", help="send 'authorization: Bearer <first line of this file>'")
    score.set_defaults(handler=run_score)

    rollout = subparsers.add_parser("rollout", help="point the stable/canary labels at versions, safely")
    rollout.add_argument("--config", required=True, help="model config file to rewrite")
    rollout.add_argument("--stable", type=int, required=True, help="version for the stable label")
    rollout.add_argument("--canary", type=int, required=True, help="version for the canary label")
    rollout.add_argument("--server", help="HOST:PORT: load, move labels and prune through HandleReloadConfigRequest")
    rollout.add_argument("--model-name", help="model to change (default: the only one in the file)")
    rollout.add_argument("--wait-seconds", type=float, default=120.0, help="how long to wait for versions to load")
    rollout.set_defaults(handler=run_rollout)


def add_router_arguments(router) -> None:
    """The router's flags: `crocodile router` and the router-only install's `crocodile-router`."""
    router.add_argument("--port", type=int, default=8600, help="gRPC port (0 picks a free one)")
    router.add_argument("--backend", required=True, help="HOST:PORT of TF Serving or the embedded model server")
    router.add_argument("--canary-backend", help="HOST:PORT serving the canary label, when not --backend")
    router.add_argument("--policy", required=True, help="canary policy YAML (see serving/config/canary_policy.yaml); "
                                                        "reloaded on SIGHUP and when the file changes")
    router.add_argument("--policy-poll-seconds", type=float, default=2.0,
                        help="check the policy file for changes this often (0: only on SIGHUP)")
    router.add_argument("--exposure-log", help="append one JSON line per request to this file")
    router.add_argument("--log-user-id-salt-file", help="log an HMAC-SHA256 of the user id keyed with this file's "
                                                        "content ('user_hash') instead of the raw id")
    router.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this HTTP port")
    router.add_argument("--model-name", default="crocodile", help="the model this router serves")
    router.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024,
                        help="largest request/response accepted (gRPC RESOURCE_EXHAUSTED beyond)")
    router.add_argument("--max-concurrent-rpcs", type=int, default=512,
                        help="requests in flight at most; beyond, RESOURCE_EXHAUSTED at once (no unbounded queue)")
    router.add_argument("--health-interval-seconds", type=float, default=2.0,
                        help="how often grpc.health.v1 status is refreshed from the backends")
    router.add_argument("--tls-cert", help="PEM certificate chain: serve TLS on --port (needs --tls-key)")
    router.add_argument("--tls-key", help="PEM private key of --tls-cert")
    router.add_argument("--backend-tls", action="store_true", help="TLS to the backends (system roots unless "
                                                                   "--backend-tls-ca)")
    router.add_argument("--backend-tls-ca", help="PEM root certificates for the backends (implies --backend-tls)")
    router.add_argument("--backend-tls-server-name", help="name to check in the backends' certificates")
    router.add_argument("--auth-token-file", help="require metadata 'authorization: Bearer T' with T a line of "
                                                  "this file (health checks stay open)")
    router.add_argument("--data-plane", choices=("auto", "python", "native"), default="auto",
                        help="native: the compiled request path (make native-router) in front of the Python router, "
                             "same answers and records at a fraction of the CPU per request (serving/README.md); "
                             "auto (default): native when it is built, else python")
    router.add_argument("--data-plane-binary", help="the compiled data plane (default: $CROCODILE_ROUTER_DATA_PLANE, "
                                                    "else build/native/router_data_plane)")
    router.add_argument("--data-plane-threads", type=int, default=1,
                        help="event threads of the native data plane, each serving whole requests (default 1: "
                             "one core's worth of routing, several thousand requests per second)")


def router_main(argv=None) -> int:
    """`crocodile-router`: the router-only distribution's command (no TensorFlow installed)."""
    import argparse
    import sys
    parser = argparse.ArgumentParser(prog="crocodile-router", description="Crocodile canary router")
    add_router_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_router(args)
    except UserError as error:
        print(f"crocodile-router: error: {error}", file=sys.stderr)
        return 2


def _bool_flag(text: str) -> bool:
    """TF Serving's boolean flags: --flag, --flag=true, --flag=false."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _configure_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _wait_for_signal(on_hangup=None) -> str:
    """Blocks until SIGTERM or SIGINT; returns the signal's name. SIGHUP calls ``on_hangup``."""
    received = []
    stop = threading.Event()

    def on_signal(number, _frame):
        received.append(signal.Signals(number).name)
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if on_hangup is not None:
        signal.signal(signal.SIGHUP, lambda number, frame: on_hangup())
    stop.wait()
    return received[0]


def _poll_config(core, path, every_s, stop: threading.Event):
    from crocodile.serving import model_config, status
    last = core.config
    while not stop.wait(every_s):
        try:
            config = model_config.read_model_config(path)
            if config != last:
                core.reload_config(config)
                last = config
        except (UserError, status.ServingError) as error:
            logging.getLogger(__name__).error("config poll: %s", error)


# (I) The stand-in's op threads when no flag sets them. TF Serving's 0 lets TensorFlow take one
# thread per core; in this Python server, TensorFlow's spinning pool threads then compete with the
# gRPC threads for the cores and the GIL: on 2 shared cores the server used ~4 ms of CPU per
# 100-example Predict against 1.2 ms for the same call in-process, and 1.7 ms with one thread each
# (benchmarks/model_server_latency.py). Any flag > 0 overrides this, as in TF Serving.
STAND_IN_OP_THREADS = 1


def tensorflow_parallelism(session: int, intra: int, inter: int):
    """(intra, inter) op threads from TF Serving's three flags (server.cc's rules)."""
    if session > 0 and intra > 0 and inter > 0:
        raise UserError("Either configure --tensorflow_session_parallelism or (--tensorflow_intra_op_parallelism, "
                        "--tensorflow_inter_op_parallelism) separately. You cannot configure all.")
    if intra > 0 or inter > 0:
        return intra or STAND_IN_OP_THREADS, inter or STAND_IN_OP_THREADS
    return (session, session) if session > 0 else (STAND_IN_OP_THREADS, STAND_IN_OP_THREADS)


def _set_op_threads(intra: int, inter: int) -> None:
    """Sets TensorFlow's op thread pools; a process that already ran TensorFlow keeps its own."""
    import tensorflow as tf
    threading_config = tf.config.threading
    if (threading_config.get_intra_op_parallelism_threads(), threading_config.get_inter_op_parallelism_threads()) \
            == (intra, inter):
        return
    try:
        threading_config.set_intra_op_parallelism_threads(intra)
        threading_config.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:  # only when started in-process after TensorFlow ran (tests)
        logging.getLogger(__name__).warning("op threads stay as they are: %s", error)


def run_model_server(args) -> int:
    _configure_logging()
    from crocodile.serving import model_config, status, tf_serving_protos
    from crocodile.serving.batching import BatchingOptions
    from crocodile.serving.model_server import DEFAULT_GRPC_MAX_THREADS, build_server, parse_grpc_channel_arguments
    from crocodile.serving.server_core import ServerCore

    if args.batching_parameters_file and not args.enable_batching:
        raise UserError("--batching_parameters_file is set without setting --enable_batching")
    if args.file_system_poll_wait_seconds < 0:
        raise UserError("--file_system_poll_wait_seconds: negative values disable polling; TF Serving reserves "
                        "them for its tests (the server would wait forever for a first version)")
    batching = None
    if args.enable_batching:
        try:
            params = (tf_serving_protos.read_batching_parameters(args.batching_parameters_file)
                      if args.batching_parameters_file else tf_serving_protos.BatchingParameters())
            batching = BatchingOptions.from_proto(params)
        except (OSError, ValueError) as error:
            raise UserError(f"--batching_parameters_file: {error}") from None
    try:
        grpc_options = parse_grpc_channel_arguments(args.grpc_channel_arguments)
    except ValueError as error:
        raise UserError(str(error)) from None
    intra, inter = tensorflow_parallelism(args.tensorflow_session_parallelism, args.tensorflow_intra_op_parallelism,
                                          args.tensorflow_inter_op_parallelism)
    _set_op_threads(intra, inter)
    config = model_config.read_model_config(args.model_config_file)
    core = ServerCore(args.allow_version_labels_for_unavailable_models,
                      file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                      max_num_load_retries=args.max_num_load_retries,
                      load_retry_interval_micros=args.load_retry_interval_micros,
                      enable_model_warmup=args.enable_model_warmup,
                      num_request_iterations_for_warmup=args.num_request_iterations_for_warmup)
    try:
        core.reload_config(config)
    except status.ServingError as error:
        core.stop()
        hint = ""
        if error.code.name == "FAILED_PRECONDITION" and not args.allow_version_labels_for_unavailable_models:
            hint = (" (as in TF Serving, labels in the first config are checked before any version has loaded: "
                    "start with --allow_version_labels_for_unavailable_models, as docker/Dockerfile.serving does)")
        raise UserError(f"--model_config_file {args.model_config_file}: {error.code.name}: {error.message}{hint}") from None
    try:
        server, port, scheduler = build_server(core, args.port, batching, grpc_options,
                                               args.grpc_max_threads or DEFAULT_GRPC_MAX_THREADS,
                                               enable_grpc_healthcheck_service=args.enable_grpc_healthcheck_service,
                                               grpc_socket_path=args.grpc_socket_path)
    except OSError as error:
        core.stop()
        raise UserError(str(error)) from None
    server.start()
    print(f"model server listening on port {port}", flush=True)
    stop_polling = threading.Event()
    if args.model_config_file_poll_wait_seconds > 0:
        threading.Thread(target=_poll_config, daemon=True, args=(
            core, args.model_config_file, args.model_config_file_poll_wait_seconds, stop_polling)).start()
    name = _wait_for_signal()
    print(f"{name}: draining", flush=True)
    stop_polling.set()
    if getattr(server, "health_servicer", None) is not None:
        server.health_servicer.enter_graceful_shutdown()
    server.stop(SHUTDOWN_GRACE_S).wait()
    if scheduler is not None:
        scheduler.stop()
    core.stop()
    return 0


def run_router(args) -> int:
    _configure_logging()
    from crocodile.serving.policy import CanaryPolicy
    from crocodile.serving.policy_watch import PolicyWatcher
    from crocodile.serving.router import BackendTls, Router, ServerTls, build_router_server, shutdown
    from crocodile.serving.router_security import read_bytes, read_tokens

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    tls = ServerTls(read_bytes(args.tls_cert, "--tls-cert"), read_bytes(args.tls_key, "--tls-key")) \
        if args.tls_cert else None
    backend_tls = None
    if args.backend_tls or args.backend_tls_ca:
        backend_tls = BackendTls(read_bytes(args.backend_tls_ca, "--backend-tls-ca"), args.backend_tls_server_name)
    if args.max_concurrent_rpcs < 1:
        raise UserError(f"--max-concurrent-rpcs must be >= 1, got {args.max_concurrent_rpcs}")
    if args.data_plane_threads < 1:
        raise UserError(f"--data-plane-threads must be >= 1, got {args.data_plane_threads}")
    policy = CanaryPolicy.load(args.policy)
    router = Router(args.backend, policy, model_name=args.model_name, exposure_log=args.exposure_log,
                    max_message_bytes=args.max_message_bytes, canary_backend=args.canary_backend,
                    backend_tls=backend_tls, auth_tokens=read_tokens(args.auth_token_file),
                    user_id_salt=read_bytes(args.log_user_id_salt_file, "--log-user-id-salt-file"),
                    policy_path=args.policy, health_interval_s=args.health_interval_seconds)
    plane = server = None
    data_plane = args.data_plane
    if data_plane == "auto":  # a named binary must exist (native's error otherwise); else native when built
        from crocodile.serving.native_router import find_binary
        data_plane = "native"
        if not args.data_plane_binary:
            try:
                find_binary()
            except UserError:
                data_plane = "python"
    try:
        if data_plane == "native":
            from crocodile.serving.native_router import NativeDataPlane
            plane = NativeDataPlane(router, args.port, binary=args.data_plane_binary,
                                    max_concurrent_rpcs=args.max_concurrent_rpcs, tls=tls, grace_s=SHUTDOWN_GRACE_S,
                                    threads=args.data_plane_threads)
            port = plane.start()
        else:
            server, port = build_router_server(router, args.port, max_concurrent_rpcs=args.max_concurrent_rpcs,
                                               tls=tls)
    except (OSError, UserError) as error:
        router.close()
        raise UserError(str(error)) from None
    if args.metrics_port is not None:
        from prometheus_client import start_http_server
        start_http_server(args.metrics_port, registry=router.metrics.registry)
    if server is not None:
        server.start()
    watcher = PolicyWatcher(router, args.policy, args.policy_poll_seconds).start()
    print(f"router listening on port {port}{' (TLS)' if tls else ''}, backend {args.backend}"
          f"{', canary backend ' + args.canary_backend if args.canary_backend else ''}, "
          f"experiment {policy.experiment}, {data_plane} data plane", flush=True)
    name = _wait_for_signal(on_hangup=watcher.trigger)
    print(f"{name}: draining in-flight requests", flush=True)
    watcher.stop()
    if plane is not None:
        plane.stop()
    else:
        shutdown(server, router, SHUTDOWN_GRACE_S)
    print(f"router stopped; exposure log flushed ({router.telemetry.lines_written} lines)", flush=True)
    return 0


def _read_features(text):
    if not text:
        return {}, {}
    try:
        if text.startswith("@"):
            with open(text[1:]) as f:
                text = f.read()
        data = json.loads(text)
    except (OSError, ValueError) as error:
        raise UserError(f"--features: {error}") from None
    if not isinstance(data, dict) or set(data) - {"context", "items"}:
        raise UserError('--features: expected {"context": {...}, "items": {"ITEM_ID": {...}}}')
    return data.get("context") or {}, data.get("items") or {}


def run_score(args) -> int:
    import grpc

    from crocodile.model.features import ITEM_KEY
    from crocodile.serving.client import ScoringClient

    items = [item.strip() for item in args.items.split(",") if item.strip()]
    if not items:
        raise UserError("--items: give at least one item id")
    context, item_features = _read_features(args.features)
    candidates = [dict(item_features.get(item, {}), **{ITEM_KEY: item}) for item in items]
    root_certificates = None
    if args.tls_ca:
        from crocodile.serving.router_security import read_bytes
        root_certificates = read_bytes(args.tls_ca, "--tls-ca")
    token = None
    if args.token_file:
        from crocodile.serving.router_security import read_tokens
        token = sorted(read_tokens(args.token_file))[0]
    with ScoringClient(args.target, model_name=args.model_name, tls=bool(args.tls or args.tls_ca),
                       root_certificates=root_certificates, tls_server_name=args.tls_server_name,
                       token=token) as client:
        try:
            result = client.regress(args.domain, args.user, candidates, context=context, label=args.label)
        except grpc.RpcError as error:
            raise UserError(f"--target {args.target}: {error.code().name}: {error.details()}") from None
    print(f"user {args.user} domain {args.domain}: arm={result.arm} version={result.version}")
    order = sorted(range(len(items)), key=lambda i: -result.scores[i])
    for rank, index in enumerate(order, start=1):
        print(f"{rank:>3}  {items[index]:<20} {result.scores[index]:.6f}")
    return 0


def run_rollout(args) -> int:
    from crocodile.serving.rollout import ServerClient, rollout

    server = ServerClient(args.server) if args.server else None
    try:
        rollout(args.config, args.stable, args.canary, server=server, model_name=args.model_name,
                wait_s=args.wait_seconds)
    finally:
        if server is not None:
            server.close()
    return 0
