"""Fixtures for the serving tests: small real SavedModels and real gRPC servers on loopback.

The SavedModels come from crocodile.serving.toy_ranker: the production signatures
(serving_default: examples -> outputs [N]; regress: inputs -> outputs [N]) over the canonical
WORLD_FEATURES columns parsed with tf.io.parse_example, so bad features fail in the graph.
Servers run in this process on ephemeral ports and are called over real gRPC.
"""
import os
import sys

import pytest

import crocodile  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# Test modules import the request builders from serving_test_data (importlib mode cannot
# import conftest); this folder goes on sys.path for that.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving_test_data import CANARY_VERSION, MODEL_NAME, STABLE_VERSION, native_data_plane_or_skip  # noqa: E402

@pytest.fixture(scope="session")
def model_base(tmp_path_factory):
    """<tmp>/crocodile/{1,2}/: two versions with different weights."""
    from crocodile.serving.toy_ranker import save_toy_ranker
    base = tmp_path_factory.mktemp("models") / MODEL_NAME
    for version in (STABLE_VERSION, CANARY_VERSION):
        save_toy_ranker(str(base / str(version)), seed=version)
    return str(base)


@pytest.fixture(scope="session")
def reference_models(model_base):
    """The same SavedModels loaded in-process: the ground truth the servers must match."""
    import tensorflow as tf
    return {v: tf.saved_model.load(os.path.join(model_base, str(v))) for v in (STABLE_VERSION, CANARY_VERSION)}


@pytest.fixture
def config_path(tmp_path, model_base):
    from crocodile.serving.model_config import write_model_config
    path = str(tmp_path / "model_config.pbtxt")
    write_model_config(path, MODEL_NAME, model_base, STABLE_VERSION, CANARY_VERSION)
    return path


@pytest.fixture
def start_model_server():
    """start(config_path, batching=None, **kwargs) -> (port, core); servers and cores stop at teardown.

    Extra keyword arguments go to ServerCore (file_system_poll_wait_seconds, max_num_load_retries, ...)."""
    from crocodile.serving.model_config import read_model_config
    from crocodile.serving.model_server import build_server
    from crocodile.serving.server_core import ServerCore
    started = []

    def start(path, batching=None, grpc_options=(), allow_unavailable_labels=True, health=False, grpc_socket_path="",
              **core_options):
        core = ServerCore(allow_version_labels_for_unavailable_models=allow_unavailable_labels, **core_options)
        core.reload_config(read_model_config(path))
        server, port, scheduler = build_server(core, 0, batching, grpc_options, host="127.0.0.1",
                                               enable_grpc_healthcheck_service=health,
                                               grpc_socket_path=grpc_socket_path)
        server.start()
        started.append((server, scheduler, core))
        return port, core
    yield start
    for server, scheduler, core in started:
        server.stop(0).wait()
        if scheduler is not None:
            scheduler.stop()
        core.stop()


@pytest.fixture(params=["python", "native"])
def data_plane(request):
    """Each router test runs with the Python request path and with the compiled one in front."""
    if request.param == "native":
        native_data_plane_or_skip()
    return request.param


@pytest.fixture
def start_router(data_plane):
    """start(backend_port, policy, exposure_log=None, max_concurrent_rpcs=None, tls=None, **router_kwargs)
    -> (port, router); start.router(router, max_concurrent_rpcs=None, tls=None) for a built Router.

    backend_port may also be a full gRPC target (e.g. "unix:/path"). With the native data plane,
    ``router`` is the Python control plane behind it (metrics, flush, reload: the same interface)."""
    from crocodile.serving.native_router import NativeDataPlane
    from crocodile.serving.router import Router, build_router_server, shutdown
    started = []

    def start(backend_port, policy, exposure_log=None, max_concurrent_rpcs=None, tls=None, **kwargs):
        backend = backend_port if isinstance(backend_port, str) else f"127.0.0.1:{backend_port}"
        return start_in_front(Router(backend, policy, exposure_log=exposure_log, **kwargs), max_concurrent_rpcs, tls)

    def start_in_front(router, max_concurrent_rpcs=None, tls=None):
        if data_plane == "native":
            plane = NativeDataPlane(router, 0, host="127.0.0.1", max_concurrent_rpcs=max_concurrent_rpcs or 512,
                                    tls=tls, grace_s=2.0)
            started.append((plane, None, router))
            return plane.start(), router
        server, port = build_router_server(router, 0, host="127.0.0.1", max_concurrent_rpcs=max_concurrent_rpcs,
                                           tls=tls)
        server.start()
        started.append((None, server, router))
        return port, router
    start.router = start_in_front  # an already built Router (TLS to its backends, say)
    yield start
    for plane, server, router in started:
        if plane is not None:
            plane.stop()
        else:
            shutdown(server, router, grace_s=2.0)


@pytest.fixture
def prediction_stub():
    """stub(port) -> PredictionServiceStub on a fresh channel (closed at teardown)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    channels = []

    def stub(port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return prediction_service_pb2_grpc.PredictionServiceStub(channel)
    yield stub
    for channel in channels:
        channel.close()
