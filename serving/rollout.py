"""``crocodile rollout``: move the stable / canary labels safely.

TF Serving only lets a label point at a version that is already loaded, and it checks labels
before it loads the versions of a new config (server_core.cc). So, with ``--server``:

1. load: write a config listing every version now labelled plus the new stable and canary, with
   the labels unchanged; reload; wait until GetModelStatus shows both new versions AVAILABLE;
2. move: same versions, labels moved; reload;
3. prune: only the two labelled versions; reload (frees the old ones' GPU memory).

Without ``--server`` the final config is written once (a server that starts from it needs
``--allow_version_labels_for_unavailable_models``). Every write is atomic, and the file as it was
before the rollout is kept as ``FILE.prev``.
"""
import os
import time
from typing import Callable, Optional

from crocodile.errors import UserError
from crocodile.serving import model_config as mc

DEFAULT_WAIT_S = 120.0
POLL_INTERVAL_S = 0.2


def _config_with(config, model_name, versions, labels):
    """A copy of ``config`` whose model ``model_name`` lists ``versions`` with ``labels``."""
    new = mc.ModelServerConfig()
    new.CopyFrom(config)
    model = mc.find_model(new, model_name, "config")
    model.model_version_policy.Clear()
    model.model_version_policy.specific.versions.extend(sorted(set(versions)))
    model.version_labels.clear()
    for label, version in sorted(labels.items()):
        model.version_labels[label] = version
    return new


class ServerClient:
    """The two ModelService calls rollout needs, against TF Serving or the embedded server."""

    def __init__(self, target: str, timeout_s: float = 30.0):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc
        self._grpc = grpc
        self._channel = grpc.insecure_channel(target)
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.target, self.timeout_s = target, timeout_s

    def reload(self, config) -> None:
        from tensorflow_serving.apis import model_management_pb2
        request = model_management_pb2.ReloadConfigRequest(config=config)
        try:
            self._stub.HandleReloadConfigRequest(request, timeout=self.timeout_s)
        except self._grpc.RpcError as error:
            raise UserError(f"--server {self.target}: reload refused: {error.code().name}: {error.details()}") from None

    def available_versions(self, model_name: str) -> dict:
        """{version: (state name, error message)}; empty when the model is unknown."""
        from tensorflow_serving.apis import get_model_status_pb2
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model_name
        try:
            response = self._stub.GetModelStatus(request, timeout=self.timeout_s)
        except self._grpc.RpcError as error:
            if error.code() == self._grpc.StatusCode.NOT_FOUND:
                return {}
            raise UserError(f"--server {self.target}: GetModelStatus failed: {error.code().name}: "
                            f"{error.details()}") from None
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: (states.Name(s.state), s.status.error_message) for s in response.model_version_status}

    def close(self):
        self._channel.close()


def wait_until_available(server: ServerClient, model_name: str, versions, wait_s: float,
                         sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        states = server.available_versions(model_name)
        for version in versions:
            state, message = states.get(version, ("NOT_FOUND", ""))
            if state == "END" and message:
                raise UserError(f"version {version} of model {model_name} failed to load: {message}")
        if all(states.get(v, ("",))[0] == "AVAILABLE" for v in versions):
            return
        if time.monotonic() > deadline:
            raise UserError(f"versions {sorted(versions)} of model {model_name} not AVAILABLE after {wait_s:.0f}s "
                            f"(states: {states}); the labels were not moved")
        sleep(POLL_INTERVAL_S)


def rollout(config_path: str, stable: int, canary: int, server: Optional[ServerClient] = None,
            model_name: Optional[str] = None, wait_s: float = DEFAULT_WAIT_S, log=print):
    """Rewrites ``config_path`` so ``stable``/``canary`` label those versions; returns the final config."""
    original = mc.read_model_config(config_path)
    model = mc.find_model(original, model_name, config_path)
    name, base_path = model.name, model.base_path
    target_labels = {mc.STABLE_LABEL: stable, mc.CANARY_LABEL: canary}
    if os.path.isdir(base_path):  # a container path (e.g. /models/...) may not exist here
        from crocodile.serving.servable import list_versions_on_disk
        missing = sorted({stable, canary} - set(list_versions_on_disk(base_path)))
        if missing:
            raise UserError(f"{config_path}: model {name}: no SavedModel for version(s) {missing} "
                            f"under base_path {base_path}")
    final = _config_with(original, name, (stable, canary), target_labels)
    mc.write_atomic(config_path + mc.BACKUP_SUFFIX, mc.format_model_config(original))
    if server is None:
        mc.write_atomic(config_path, mc.format_model_config(final))
        log(f"wrote {config_path}: {name} stable={stable} canary={canary} (previous in {config_path}.prev)")
        return final
    current_labels = dict(model.version_labels)
    loading = set(current_labels.values()) | {stable, canary}
    steps = (("load", _config_with(original, name, loading, current_labels)),
             ("move labels", _config_with(original, name, loading, target_labels)),
             ("prune", final))
    for step, config in steps:
        mc.write_atomic(config_path, mc.format_model_config(config))
        server.reload(config)
        if step == "load":
            wait_until_available(server, name, (stable, canary), wait_s)
        log(f"{step}: versions {list(mc.find_model(config, name, config_path).model_version_policy.specific.versions)} "
            f"labels {dict(mc.find_model(config, name, config_path).version_labels)}")
    return final
