"""One loaded model version: a SavedModel, its SignatureDefs, and how to run a signature.

Loads with ``tf.saved_model.load`` from ``<base_path>/<version>/``, as TF Serving's
SavedModel loader does, and keeps the ``SignatureDef`` protos from ``saved_model.pb`` for
GetModelMetadata and for the signature checks TF Serving makes before running. A folder
without a SavedModel or with an unreadable ``saved_model.pb`` fails with TensorFlow's own
status (NOT_FOUND / DATA_LOSS and message), which GetModelStatus then reports.
"""
import os
from typing import Dict, List

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from crocodile.serving import status

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"


def list_versions_on_disk(base_path: str) -> List[int]:
    """Integer-named folders under ``base_path`` holding a SavedModel (TF Serving's layout)."""
    if not os.path.isdir(base_path):
        return []
    versions = []
    for name in os.listdir(base_path):
        if name.isdigit() and os.path.isfile(os.path.join(base_path, name, SAVED_MODEL_FILE)):
            versions.append(int(name))
    return sorted(versions)


def read_saved_model(export_dir: str) -> "saved_model_pb2.SavedModel":
    """The SavedModel proto, or TensorFlow's status when there is none or it does not parse."""
    path = os.path.join(export_dir, SAVED_MODEL_FILE)
    if not tf.io.gfile.exists(path):
        if tf.io.gfile.exists(os.path.join(export_dir, SAVED_MODEL_TEXT_FILE)):
            from google.protobuf import text_format
            with tf.io.gfile.GFile(os.path.join(export_dir, SAVED_MODEL_TEXT_FILE)) as f:
                return text_format.Parse(f.read(), saved_model_pb2.SavedModel())
        raise status.ServingError(
            grpc.StatusCode.NOT_FOUND,
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {export_dir}. Check "
            "that the directory exists and that you have the right permissions for accessing it.")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        saved_model.ParseFromString(data)
    except DecodeError:
        raise status.ServingError(grpc.StatusCode.DATA_LOSS, f"Can't parse {path} as binary proto") from None
    if not saved_model.meta_graphs:
        raise status.ServingError(grpc.StatusCode.DATA_LOSS, f"Can't parse {path} as binary proto")
    return saved_model


def read_signature_defs(export_dir: str) -> Dict[str, "tf.compat.v1.SignatureDef"]:
    return dict(read_saved_model(export_dir).meta_graphs[0].signature_def)


class LoadedVersion:
    """A servable: (model name, version) with its concrete signature functions."""

    def __init__(self, name: str, version: int, export_dir: str):
        self.name = name
        self.version = int(version)
        self.export_dir = export_dir
        self.signature_defs = dict(read_saved_model(export_dir).meta_graphs[0].signature_def)
        self._model = tf.saved_model.load(export_dir)
        self._functions = dict(self._model.signatures)

    def run(self, signature_name: str, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Runs a signature; errors raised by the graph come back with TF Serving's codes."""
        function = self._functions[signature_name]
        signature = self.signature_defs[signature_name]
        feed = {}
        for alias, value in inputs.items():
            expected = tf.dtypes.as_dtype(signature.inputs[alias].dtype)
            array = np.asarray(value)
            if expected == tf.string and array.dtype.kind not in ("S", "O", "U"):
                raise status.invalid_argument(
                    f"Expects arg[{alias}] to be string but {array.dtype} is provided")
            try:
                feed[alias] = tf.convert_to_tensor(array, dtype=expected)
            except (TypeError, ValueError) as error:
                raise status.invalid_argument(
                    f"input '{alias}' expects {expected.name}: {error}") from None
        try:
            outputs = function(**feed)
        except tf.errors.OpError as error:
            raise status.from_tf_error(error) from None
        except UnicodeDecodeError as error:
            # TF raises this instead of the OpError when the error message quotes input bytes
            # that are not UTF-8 (garbage in a serialized tf.Example); the bytes are the message.
            message = status.first_paragraph(bytes(error.object).decode("utf-8", "replace"))
            raise status.invalid_argument(message) from None
        except (TypeError, ValueError) as error:
            raise status.invalid_argument(f"signature '{signature_name}': {error}") from None
        return {alias: tensor.numpy() for alias, tensor in outputs.items()}
