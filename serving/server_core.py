"""Model versions and labels of the embedded model server, with TF Serving's semantics.

Mirrors ``tensorflow_serving/model_servers/server_core.cc`` (2.16) where a client can see it:

- ``reload_config``: only ``model_config_list`` configs; a model listed twice is
  INVALID_ARGUMENT; labels are checked BEFORE new versions load, so a label may only point at
  a version that is already AVAILABLE (FAILED_PRECONDITION "Request to assign label to version
  V of model M, which is not currently available for inference"), unless
  ``allow_version_labels_for_unavailable_models`` is set and the label is new or unchanged.
  This is why moving an in-use label takes two config pushes (``crocodile rollout``).
- ``resolve``: no name -> INVALID_ARGUMENT "ModelSpec has no name specified."; unknown label ->
  INVALID_ARGUMENT "Unrecognized servable version label: L"; unknown model or version ->
  NOT_FOUND "Servable not found for request: Latest(M)" / "Specific(M, V)"; no version -> the
  highest loaded version.
- ``version_states`` backs GetModelStatus (NOT_FOUND "Could not find any versions of model M").

Versions load synchronously inside ``reload_config`` (TF Serving loads them asynchronously and
reports LOADING meanwhile); a version that fails to load is reported END with its error.
"""
import logging
import os
import threading
from typing import Dict, List, Optional, Tuple

from tensorflow_serving.apis import get_model_status_pb2

from crocodile.serving import status
from crocodile.serving.servable import LoadedVersion, list_versions_on_disk

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus


def aspired_versions(model_config, on_disk: List[int]) -> List[int]:
    """Versions the ``model_version_policy`` asks for, among those on disk."""
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        return sorted(v for v in set(policy.specific.versions) if v in on_disk)
    if choice == "all":
        return list(on_disk)
    num = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return sorted(on_disk)[-num:]


class ServerCore:
    """Holds the current ModelServerConfig, the loaded versions and the label map."""

    def __init__(self, allow_version_labels_for_unavailable_models: bool = False):
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self._config = None
        self._loaded: Dict[Tuple[str, int], LoadedVersion] = {}
        self._failed: Dict[Tuple[str, int], str] = {}
        self._labels: Dict[str, Dict[str, int]] = {}

    # --- configuration -------------------------------------------------------------------
    def reload_config(self, config) -> None:
        if config.WhichOneof("config") != "model_config_list":
            raise status.invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported")
        names = [m.name for m in config.model_config_list.config]
        for name in names:
            if names.count(name) > 1:
                raise status.invalid_argument(f"Illegal to list model {name} multiple times in config list")
        with self._reload_lock:  # one reload at a time; requests keep flowing meanwhile
            with self._lock:
                new_labels = self._label_map(config)
                self._config = config
                self._labels = new_labels
            self._sync_versions(config)

    def _label_map(self, config) -> Dict[str, Dict[str, int]]:
        labels: Dict[str, Dict[str, int]] = {}
        for model in config.model_config_list.config:
            for label, version in model.version_labels.items():
                existing = self._labels.get(model.name, {}).get(label)
                allowed = self._allow_unavailable_labels and existing in (None, version)
                if not allowed and (model.name, version) not in self._loaded:
                    raise status.failed_precondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference")
                labels.setdefault(model.name, {})[label] = version
        return labels

    def _sync_versions(self, config) -> None:
        """Loads the aspired versions not yet loaded (outside the request lock), then unloads the rest."""
        wanted, loaded, failed = set(), {}, {}
        for model in config.model_config_list.config:
            for version in aspired_versions(model, list_versions_on_disk(model.base_path)):
                key = (model.name, version)
                wanted.add(key)
                if key in self._loaded:
                    continue
                export_dir = os.path.join(model.base_path, str(version))
                log.info("loading %s version %d from %s", model.name, version, export_dir)
                try:
                    loaded[key] = LoadedVersion(model.name, version, export_dir)
                except Exception as error:  # a bad SavedModel must not take the server down
                    log.error("failed to load %s version %d: %s", model.name, version, error)
                    failed[key] = str(error)
        with self._lock:
            self._loaded.update(loaded)
            for key in loaded:
                self._failed.pop(key, None)
            self._failed.update(failed)
            for key in [k for k in self._loaded if k not in wanted]:
                log.info("unloading %s version %d", *key)
                del self._loaded[key]

    @property
    def config(self):
        with self._lock:
            return self._config

    # --- request resolution --------------------------------------------------------------
    def resolve(self, model_spec) -> LoadedVersion:
        name = model_spec.name
        if not name:
            raise status.invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            choice = model_spec.WhichOneof("version_choice")
            if choice == "version_label":
                label = model_spec.version_label
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise status.invalid_argument(f"Unrecognized servable version label: {label}")
                request = f"Specific({name}, {version})"
            elif choice == "version":
                version = model_spec.version.value
                request = f"Specific({name}, {version})"
            else:
                versions = [v for (n, v) in self._loaded if n == name]
                version = max(versions) if versions else None
                request = f"Latest({name})"
            servable = self._loaded.get((name, version))
        if servable is None:
            raise status.not_found(f"Servable not found for request: {request}")
        return servable

    def version_states(self, name: str, version: Optional[int] = None):
        """[(version, state, error message or '')] for GetModelStatus."""
        with self._lock:
            states = [(v, State.AVAILABLE, "") for (n, v) in self._loaded if n == name]
            states += [(v, State.END, msg) for (n, v), msg in self._failed.items() if n == name]
        states.sort()
        if version is not None:
            states = [s for s in states if s[0] == version]
            if not states:
                raise status.not_found(f"Could not find version {version} of model {name}")
        elif not states:
            raise status.not_found(f"Could not find any versions of model {name}")
        return states
