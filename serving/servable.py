"""One loaded model version: a SavedModel, its SignatureDefs, and how to run a signature.

Loads with ``tf.saved_model.load`` from ``<base_path>/<version>/``, as TF Serving's
SavedModel loader does, and keeps the ``SignatureDef`` protos from ``saved_model.pb`` for
GetModelMetadata and for the signature checks TF Serving makes before running.
"""
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from crocodile.serving import status

SAVED_MODEL_FILE = "saved_model.pb"


def list_versions_on_disk(base_path: str) -> List[int]:
    """Integer-named folders under ``base_path`` holding a SavedModel (TF Serving's layout)."""
    if not os.path.isdir(base_path):
        return []
    versions = []
    for name in os.listdir(base_path):
        if name.isdigit() and os.path.isfile(os.path.join(base_path, name, SAVED_MODEL_FILE)):
            versions.append(int(name))
    return sorted(versions)


def read_signature_defs(export_dir: str) -> Dict[str, "tf.compat.v1.SignatureDef"]:
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, SAVED_MODEL_FILE), "rb") as f:
        saved_model.ParseFromString(f.read())
    return dict(saved_model.meta_graphs[0].signature_def)


class LoadedVersion:
    """A servable: (model name, version) with its concrete signature functions."""

    def __init__(self, name: str, version: int, export_dir: str):
        self.name = name
        self.version = int(version)
        self.export_dir = export_dir
        self.signature_defs = read_signature_defs(export_dir)
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
