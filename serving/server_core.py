"""Model versions and labels of the embedded model server, with TF Serving's semantics.

Mirrors tensorflow_serving 2.16 where a client can see it (model_servers/server_core.cc,
sources/storage_path/file_system_storage_path_source.cc, core/aspired_versions_manager.cc,
core/availability_preserving_policy.cc, core/loader_harness.cc, core/servable_state_monitor.cc):

- Config validation (``reload_config``): only ``model_config_list`` configs; a model listed twice,
  a relative ``base_path`` ("Expected model M to have an absolute path or URI; got
  base_path()=P"), a missing ``model_platform``, a platform other than ``tensorflow`` and a
  model changing platform are INVALID_ARGUMENT with TF Serving's messages. Labels are checked
  BEFORE new versions load: a label may only point at an AVAILABLE version (FAILED_PRECONDITION),
  unless ``allow_version_labels_for_unavailable_models`` is set and the label is new or unchanged.
- File-system polling: every ``file_system_poll_wait_seconds`` (TF Serving's default 1 s; 0 =
  poll once) each model's base path is listed; children named as integers are versions, and the
  model's ``model_version_policy`` (latest N, the default; all; specific) picks the aspired ones.
  A missing base path fails that poll (logged) and changes nothing.
- One manager thread loads and unloads, one action at a time, as TF Serving's default
  ``num_load_threads=0`` does, with the availability-preserving policy: an old version is
  unloaded only once an aspired version is AVAILABLE (or nothing is aspired), so a broken new
  version leaves the old one serving. A failed load is retried ``max_num_load_retries`` times,
  ``load_retry_interval_micros`` apart, then reported END with its error.
- States (GetModelStatus): START, LOADING, AVAILABLE, UNLOADING, END, each with TF Serving's
  status (error code and message of a failed load); every version ever managed stays listed,
  highest version first, as the servable state monitor keeps them.
- ``reload_config`` returns once the config is accepted; versions of models already served load
  in the background (poll GetModelStatus for AVAILABLE). The first config and models new to a
  config are awaited, as TF Serving does at start-up and in ReloadConfig (error UNKNOWN
  "N servable(s) did not become available: ..."). Differences (I): the first config waits for
  every aspired version, not only one per model, so a client never sees a half-started label
  pair; a config change is polled at once, not at the next tick; a model with no version on
  disk is not awaited (TF Serving would block until one appears).
"""
import dataclasses
import functools
import logging
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from crocodile.serving import status

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus
TENSORFLOW_PLATFORM = "tensorflow"
DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS = 1.0
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_MICROS = 60 * 1000 * 1000
_VERSION_NAME = re.compile(r"^[0-9]+$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Harness states of one managed version (loader_harness.h), reduced to what a client can see.
_NEW, _LOADING, _READY, _UNLOADING, _ERROR = "new", "loading", "ready", "unloading", "error"


@dataclasses.dataclass
class _Managed:
    path: str
    aspired: bool = True
    harness: str = _NEW
    servable: object = None


def versions_in_base_path(base_path: str, name: str = "") -> Dict[int, str]:
    """{version: path} of the children of ``base_path`` named as integers (TF Serving's rule).

    Raises ``status.ServingError`` (INVALID_ARGUMENT, TF Serving's message) when the base path
    does not exist. gs://, s3:// and other file systems TensorFlow knows work through tf.io.gfile.
    """
    if not tf.io.gfile.exists(base_path):
        raise status.invalid_argument(f"Could not find base path {base_path} for servable {name} with error "
                                      f"NOT_FOUND: {base_path} not found")
    children = {child.rstrip("/").split("/")[0] for child in tf.io.gfile.listdir(base_path)}
    return {int(child): base_path.rstrip("/") + "/" + child for child in children if _VERSION_NAME.match(child)}


def aspired_versions(model_config, on_disk: Dict[int, str]) -> Dict[int, str]:
    """The versions on disk that the ``model_version_policy`` asks for (latest 1 by default)."""
    policy = model_config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "specific":
        wanted = set(policy.specific.versions)
        missing = wanted - set(on_disk)
        if missing:
            log.warning("versions %s of %s, requested as 'specific', are not in %s", sorted(missing),
                        model_config.name, model_config.base_path)
        return {v: p for v, p in on_disk.items() if v in wanted}
    if choice == "all":
        return dict(on_disk)
    num = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return {v: on_disk[v] for v in sorted(on_disk)[-num:]}


def _is_relative_path(uri: str) -> bool:
    return not _URI_SCHEME.match(uri) and not uri.startswith("/")


def _platform(model) -> str:
    if model.model_type:
        if model.model_platform:
            raise status.invalid_argument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {model.name}")
        if model.model_type != 1:  # ModelType.TENSORFLOW
            raise status.invalid_argument(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        return TENSORFLOW_PLATFORM
    if not model.model_platform:
        raise status.invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}")
    return model.model_platform


def validate_config(config, previous=None) -> None:
    """TF Serving's checks of a new ModelServerConfig (ValidateModelConfigList and friends)."""
    if config.WhichOneof("config") != "model_config_list":
        raise status.invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
            "ModelConfigList is currently supported")
    models = list(config.model_config_list.config)
    names = set()
    for model in models:
        if model.name in names:
            raise status.invalid_argument(f"Illegal to list model {model.name} multiple times in config list")
        names.add(model.name)
    for model in models:
        if _is_relative_path(model.base_path):
            raise status.invalid_argument(
                f"Expected model {model.name} to have an absolute path or URI; got base_path()={model.base_path}")
    if previous is not None:
        old = {m.name: _platform(m) for m in previous.model_config_list.config}
        for model in models:
            if model.name in old and _platform(model) != old[model.name]:
                raise status.invalid_argument(
                    f"Illegal to change a model's platform. For model {model.name} platform was "
                    f"{old[model.name]} and new platform requested is {_platform(model)}")


def _check_platforms(config) -> None:
    for model in config.model_config_list.config:
        platform = _platform(model)
        if platform != TENSORFLOW_PLATFORM:
            raise status.invalid_argument(f"Model {model.name} requests unsupported platform {platform}")


def _load_error(error: BaseException) -> status.ServingError:
    """The status TF Serving reports for a failed load: TF's code when there is one."""
    if isinstance(error, status.ServingError):
        return error
    if isinstance(error, tf.errors.OpError):
        return status.from_tf_error(error)
    return status.ServingError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


class ServerCore:
    """Holds the current ModelServerConfig, the managed versions, their states and the label map."""

    def __init__(self, allow_version_labels_for_unavailable_models: bool = False, *,
                 file_system_poll_wait_seconds: float = DEFAULT_FILE_SYSTEM_POLL_WAIT_SECONDS,
                 max_num_load_retries: int = DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_micros: int = DEFAULT_LOAD_RETRY_INTERVAL_MICROS,
                 enable_model_warmup: bool = True, num_request_iterations_for_warmup: int = 0,
                 loader: Optional[Callable[[str, int, str], object]] = None):
        if file_system_poll_wait_seconds < 0:
            raise ValueError("file_system_poll_wait_seconds < 0 disables polling; TF Serving reserves that for its "
                             "own tests (the server would wait forever for a first version)")
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._poll_wait_s = file_system_poll_wait_seconds
        self._max_retries = max(0, int(max_num_load_retries))
        self._retry_interval_s = max(0.0, load_retry_interval_micros / 1e6)
        if loader is None:  # TF Serving's defaults: warmup on, one iteration per record
            from crocodile.serving import warmup
            from crocodile.serving.servable import LoadedVersion
            iterations = num_request_iterations_for_warmup if num_request_iterations_for_warmup > 0 else 1
            loader = (functools.partial(warmup.load_and_warm_up, iterations=iterations)
                      if enable_model_warmup else LoadedVersion)
        self._loader = loader
        self._cond = threading.Condition(threading.RLock())
        self._reload_lock = threading.Lock()
        self._config = None
        self._labels: Dict[str, Dict[str, int]] = {}
        self._managed: Dict[str, Dict[int, _Managed]] = {}
        # The servable state monitor: (state, code, message) of every version ever managed.
        self._states: Dict[str, Dict[int, Tuple[int, grpc.StatusCode, str]]] = {}
        self._available: Dict[Tuple[str, int], object] = {}
        self._poll_requested = False
        self._stopping = False
        self._thread = threading.Thread(target=self._manage, name="aspired-versions-manager", daemon=True)
        self._thread.start()

    # --- configuration -------------------------------------------------------------------
    def reload_config(self, config, wait_s: Optional[float] = None) -> None:
        with self._reload_lock:  # one reload at a time; requests keep flowing meanwhile
            with self._cond:
                previous = self._config
            validate_config(config, previous)
            with self._cond:
                new_labels = self._label_map(config)
            _check_platforms(config)
            awaited = [m.name for m in config.model_config_list.config]
            if previous is not None:
                awaited = [n for n in awaited if n not in {m.name for m in previous.model_config_list.config}]
            with self._cond:
                self._config = config
                self._labels = new_labels
                for name in list(self._managed):
                    if name not in {m.name for m in config.model_config_list.config}:
                        for record in self._managed[name].values():
                            record.aspired = False
                self._poll_requested = True
                self._cond.notify_all()
            self._await_models(awaited, every_version=previous is None, wait_s=wait_s)

    def _label_map(self, config) -> Dict[str, Dict[str, int]]:
        labels: Dict[str, Dict[str, int]] = {}
        for model in config.model_config_list.config:
            for label, version in model.version_labels.items():
                existing = self._labels.get(model.name, {}).get(label)
                allowed = self._allow_unavailable_labels and existing in (None, version)
                if not allowed and (model.name, version) not in self._available:
                    raise status.failed_precondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference")
                labels.setdefault(model.name, {})[label] = version
        return labels

    def _await_models(self, names: List[str], every_version: bool, wait_s: Optional[float]) -> None:
        """Blocks until the awaited models' versions are AVAILABLE or END; raises if one failed."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self._cond:
            while True:
                pending = self._poll_requested or any(
                    r.harness in (_NEW, _LOADING) and r.aspired
                    for name in names for r in self._managed.get(name, {}).values())
                if not every_version:
                    pending = self._poll_requested or any(
                        self._managed.get(name) and not any(
                            self._states[name][v][0] in (State.AVAILABLE, State.END)
                            for v in self._managed[name]) for name in names)
                if not pending or self._stopping:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise status.ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, f"models {names} still loading")
                self._cond.wait(remaining)
            failed = []
            for name in names:
                versions = [v for v in sorted(self._managed.get(name, {}), reverse=True)
                            if self._states[name][v][0] in (State.AVAILABLE, State.END)]
                if versions and self._states[name][versions[0]][0] == State.END:
                    _, code, message = self._states[name][versions[0]]
                    failed.append(f"{{name: {name} version: {versions[0]} due to error: {code.name}: {message}}}")
        if failed:
            raise status.ServingError(grpc.StatusCode.UNKNOWN,
                                      f"{len(failed)} servable(s) did not become available: {{{', '.join(failed)}, }}")

    @property
    def config(self):
        with self._cond:
            return self._config

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    # --- the manager thread ----------------------------------------------------------------
    def _manage(self) -> None:
        next_poll = None
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    if self._poll_requested or (next_poll is not None and now >= next_poll):
                        break
                    action = self._next_action()
                    if action is not None:
                        break
                    self._cond.wait(None if next_poll is None else next_poll - now)
                if self._stopping:
                    return
                config, poll = self._config, self._poll_requested or (
                    next_poll is not None and time.monotonic() >= next_poll)
            if poll:
                self._poll(config)
                next_poll = time.monotonic() + self._poll_wait_s if self._poll_wait_s > 0 else None
                continue
            kind, name, version = action
            if kind == "load":
                self._load(name, version)
            else:
                self._unload(name, version)

    def _poll(self, config) -> None:
        """One FileSystemStoragePathSource poll: the aspired versions of every configured model."""
        aspired = {}
        try:
            for model in config.model_config_list.config if config is not None else ():
                aspired[model.name] = aspired_versions(model, versions_in_base_path(model.base_path, model.name))
        except status.ServingError as error:  # TF Serving logs and keeps what it had
            log.error("FileSystemStoragePathSource encountered a filesystem access error: %s", error.message)
            aspired = None
        with self._cond:
            if aspired is not None and config is self._config:
                for name, versions in aspired.items():
                    self._set_aspired(name, versions)
            if config is self._config:
                self._poll_requested = False
            self._cond.notify_all()

    def _set_aspired(self, name: str, versions: Dict[int, str]) -> None:
        managed = self._managed.setdefault(name, {})
        for version, record in list(managed.items()):
            record.aspired = version in versions
            if not record.aspired and record.harness in (_NEW, _ERROR):
                del managed[version]  # never loaded, or failed: dropped (kEnd already reported)
                if record.harness == _NEW:
                    self._report(name, version, State.END)
        for version, path in versions.items():
            if version not in managed:
                managed[version] = _Managed(path)
                self._report(name, version, State.START)

    def _next_action(self):
        """AvailabilityPreservingPolicy::GetNextAction over every model; None when idle."""
        for name, managed in self._managed.items():
            aspired = [v for v, r in managed.items() if r.aspired]
            aspired_serving = any(managed[v].harness == _READY for v in aspired)
            unaspired_serving = sorted(v for v, r in managed.items() if not r.aspired and r.harness == _READY)
            if unaspired_serving and (not aspired or aspired_serving or len(unaspired_serving) > 1):
                return "unload", name, unaspired_serving[0]
            new = [v for v in aspired if managed[v].harness == _NEW]
            if new:
                return "load", name, max(new)
        return None

    def _report(self, name: str, version: int, state: int, code=grpc.StatusCode.OK, message: str = "") -> None:
        self._states.setdefault(name, {})[version] = (state, code, message)
        self._cond.notify_all()

    def _load(self, name: str, version: int) -> None:
        with self._cond:
            record = self._managed[name][version]
            record.harness = _LOADING
            self._report(name, version, State.LOADING)
        error = None
        for attempt in range(self._max_retries + 1):
            if attempt:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping or not record.aspired, self._retry_interval_s)
                    if self._stopping or not record.aspired:
                        break
                log.info("Retrying of Loading servable: {name: %s version: %d} retry: %d", name, version, attempt)
            log.info("Loading servable version {name: %s version: %d} from %s", name, version, record.path)
            try:
                servable, error = self._loader(name, version, record.path), None
                break
            except Exception as exc:  # a bad SavedModel must not take the server down
                error = _load_error(exc)
                log.error("Loading servable: {name: %s version: %d} failed: %s: %s", name, version,
                          error.code.name, error.message)
        with self._cond:
            if error is None and not self._stopping and record.aspired:
                record.harness, record.servable = _READY, servable
                self._available[(name, version)] = servable
                self._report(name, version, State.AVAILABLE)
                log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
            elif error is None:  # un-aspired while loading: TF Serving cancels the load
                self._managed[name].pop(version, None)
                self._report(name, version, State.END, grpc.StatusCode.CANCELLED, "Loading of servable cancelled")
            else:
                record.harness = _ERROR
                self._report(name, version, State.END, error.code, error.message)
                if not record.aspired:
                    self._managed[name].pop(version, None)

    def _unload(self, name: str, version: int) -> None:
        with self._cond:
            record = self._managed[name][version]
            record.harness = _UNLOADING
            self._available.pop((name, version), None)  # no new request gets it; in-flight ones finish
            self._report(name, version, State.UNLOADING)
        log.info("Unloading servable version {name: %s version: %d}", name, version)
        record.servable = None
        with self._cond:
            self._managed[name].pop(version, None)
            self._report(name, version, State.END)

    # --- request resolution --------------------------------------------------------------
    def resolve(self, model_spec):
        name = model_spec.name
        if not name:
            raise status.invalid_argument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        with self._cond:
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
                versions = [v for (n, v) in self._available if n == name]
                version = max(versions) if versions else None
                request = f"Latest({name})"
            servable = self._available.get((name, version))
        if servable is None:
            raise status.not_found(f"Servable not found for request: {request}")
        return servable

    def version_states(self, name: str, version: Optional[int] = None):
        """[(version, state, code, message)] for GetModelStatus, highest version first."""
        with self._cond:
            states = sorted(((v, s, c, m) for v, (s, c, m) in self._states.get(name, {}).items()), reverse=True)
        if version is not None:
            states = [s for s in states if s[0] == version]
            if not states:
                raise status.not_found(f"Could not find version {version} of model {name}")
        elif not states:
            raise status.not_found(f"Could not find any versions of model {name}")
        return states

    def available_versions(self, name: str) -> List[int]:
        with self._cond:
            return sorted(v for (n, v) in self._available if n == name)
