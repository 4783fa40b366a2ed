"""The TF Serving model config file: a text ``ModelServerConfig`` proto.

Read and written with the official proto (``tensorflow_serving.config``), so whatever this
module writes, ``tensorflow_model_server --model_config_file`` reads. Writes are atomic
(temporary file in the same folder, fsync, rename): a server that polls the file
(``--model_config_file_poll_wait_seconds``) never sees half a config.
"""
import os
import shutil
import tempfile
from typing import Iterable, Optional

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from crocodile.errors import UserError

STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
DEFAULT_MODEL_NAME = "crocodile"
BACKUP_SUFFIX = ".prev"

ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse_model_config(text: str, source: str = "<text>") -> "ModelServerConfig":
    try:
        return text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as error:
        raise UserError(f"{source}: not a valid tensorflow.serving.ModelServerConfig: {error}") from None


def read_model_config(path: str) -> "ModelServerConfig":
    if not os.path.isfile(path):
        raise UserError(f"model config file {path} does not exist")
    with open(path) as f:
        return parse_model_config(f.read(), source=path)


def format_model_config(config: "ModelServerConfig") -> str:
    return text_format.MessageToString(config)


def build_model_config(model_name: str, base_path: str, versions: Iterable[int],
                       labels: Optional[dict] = None) -> "ModelServerConfig":
    """One model, ``specific`` version policy, and the given labels (label -> version)."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add(
        name=model_name, base_path=base_path, model_platform="tensorflow")
    model.model_version_policy.specific.versions.extend(sorted(set(int(v) for v in versions)))
    for label, version in sorted((labels or {}).items()):
        model.version_labels[label] = int(version)
    return config


def write_atomic(path: str, text: str, keep_previous: bool = False) -> None:
    """Writes ``text`` to ``path`` via temp file + rename; optionally keeps ``path.prev``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if keep_previous and os.path.exists(path):
        shutil.copy2(path, path + BACKUP_SUFFIX)
    fd, temp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.unlink(temp_path)
        raise


def write_model_config(path: str, model_name: str, base_path: str, stable_version: int,
                       canary_version: int) -> "ModelServerConfig":
    """Writes a config that serves ``stable_version`` and ``canary_version`` under their labels."""
    config = build_model_config(model_name, base_path, (stable_version, canary_version),
                                {STABLE_LABEL: stable_version, CANARY_LABEL: canary_version})
    write_atomic(path, format_model_config(config))
    return config


def find_model(config: "ModelServerConfig", model_name: Optional[str], source: str):
    """The ``ModelConfig`` named ``model_name`` (or the only one when the name is None)."""
    models = list(config.model_config_list.config)
    if model_name is None:
        if len(models) != 1:
            raise UserError(f"{source}: holds {len(models)} models; name one with --model-name")
        return models[0]
    for model in models:
        if model.name == model_name:
            return model
    raise UserError(f"{source}: no model named {model_name!r} (has {[m.name for m in models]})")
