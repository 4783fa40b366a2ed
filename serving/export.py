"""Serving export: a SavedModel with the inference path only.

The root object is a bare ``tf.Module`` that tracks exactly two things: the model's
``network`` (the whole inference path, crocodile.model API) and the TFT layer.
``tf.saved_model.save`` writes every object reachable from the root, so saving the
training model (a tfrs.Model) would also write its optimizer slots, metrics and any
training-only loss variables; this root cannot reach them.

Signatures (CONTRACTS "Export"):
- ``serving_default``: ``examples`` [N] serialized tf.Example (raw features, no label)
  -> ``{'outputs': float32 [N]}`` click probability (Predict API; TFX, TFMA defaults).
- ``regress``: ``inputs`` [N] -> ``{'outputs': float32 [N]}`` with method name
  ``tensorflow/serving/regress``, so TF Serving's Regress API (ExampleListWithContext:
  user and domain sent once, candidates as a list) accepts it.
- ``transform_features``: ``examples`` -> transformed features (TFMA preprocessing).

Files beside ``saved_model.pb`` (TF Serving reads both):
- ``assets.extra/tf_serving_warmup_requests``: a PredictRequest (``serving_default``) and a
  RegressionRequest (``regress``, ExampleListWithContext) per warmup size, replayed at load by
  TF Serving's ``--enable_model_warmup`` (and the embedded server), so no user request pays for
  tracing, graph optimisation or GPU autotuning. Sizes: 1 and every ``allowed_batch_sizes`` entry of
  serving/config/batching_parameters.pbtxt, the padded batch sizes the GPU image runs. Feature values
  are placeholders (out-of-vocabulary strings, zeros, domains 0..S-1): warmup exercises shapes, not scores.
- ``fingerprint.pb``: rewritten after ``saved_model.pb`` gets the Regress method name, so its
  checksum is that of the file on disk.

Requests are parsed with the raw feature spec restricted to the model's inputs: the
label and log-only columns (purchase, position, request_id, timestamp) are not parsed,
so serving requests need not carry them. A request missing a model input fails parsing
(INVALID_ARGUMENT) instead of being scored with made-up values.
"""
import os
from typing import Dict

import numpy as np
import tensorflow as tf

from crocodile.model.features import DOMAIN_KEY, FeatureConfig, transformed_name

REGRESS_METHOD_NAME = "tensorflow/serving/regress"
OUTPUT_KEY = "outputs"


_SCALAR_SPECS = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}


def serving_feature_spec(tft_output, feature_config: FeatureConfig) -> Dict[str, tf.io.FixedLenFeature]:
    """The raw feature spec limited to the columns the model reads.

    TFX's Transform records the raw schema next to the transform graph; a transform
    analysed in-process (crocodile.pipeline.transform_local) records only the transform
    graph, whose inputs are the feature config's columns as scalars.
    """
    wanted = feature_config.raw_feature_columns
    try:
        raw_spec = tft_output.raw_feature_spec()
    except OSError:  # no raw metadata written with this transform graph
        return {key: tf.io.FixedLenFeature([], _SCALAR_SPECS[dtype]) for key, dtype in wanted.items()}
    missing = set(wanted) - set(raw_spec)
    if missing:
        raise ValueError(f"raw schema lacks model input columns {sorted(missing)}")
    return {key: spec for key, spec in raw_spec.items() if key in wanted}


def model_input_keys(feature_config: FeatureConfig):
    """Transformed feature names the network reads (CONTRACTS: Model API)."""
    keys = [transformed_name(k) for k in (*feature_config.categorical, *feature_config.numeric)]
    return keys + [transformed_name(DOMAIN_KEY)]


class ServingModule(tf.Module):
    """Root of the exported SavedModel; tracks ``network`` and ``tft_layer`` only."""

    def __init__(self, network, tft_layer, feature_spec, input_keys):
        super().__init__(name="crocodile_serving")
        self.network = network
        self.tft_layer = tft_layer
        # Plain Python containers of non-trackables: not saved as objects.
        self._feature_spec = dict(feature_spec)
        self._input_keys = tuple(input_keys)

    def _transform(self, serialized):
        raw = tf.io.parse_example(serialized, self._feature_spec)
        return self.tft_layer(raw)

    def _probability(self, serialized):
        transformed = self._transform(serialized)
        features = {key: transformed[key] for key in self._input_keys}
        probability = self.network(features, training=False)["probability"]
        return tf.reshape(tf.cast(probability, tf.float32), [-1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return {OUTPUT_KEY: self._probability(examples)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {OUTPUT_KEY: self._probability(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(self, examples):
        return self._transform(examples)


def _set_method_name(export_dir: str, signature_key: str, method_name: str) -> None:
    """TF2's saver writes every signature as Predict; TF Serving's Regress wants its own name."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[signature_key].method_name = method_name
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())


WARMUP_CONTEXT_KEYS = ("user_id", "user_segment", "user_region", DOMAIN_KEY)  # sent once per Regress request


def warmup_batch_sizes():
    """1 and the GPU image's padded batch sizes (allowed_batch_sizes of the project's batching file)."""
    from crocodile.serving import tf_serving_protos
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "batching_parameters.pbtxt")
    return sorted({1, *tf_serving_protos.read_batching_parameters(path).allowed_batch_sizes})


def _placeholder_value(key: str, spec, index: int, num_domains: int):
    if key == DOMAIN_KEY:
        return index % num_domains
    if spec.dtype == tf.string:
        return f"warmup-{key}"
    return 0 if spec.dtype == tf.int64 else 0.0


def warmup_requests(feature_spec, feature_config: FeatureConfig, sizes):
    """[PredictRequest, RegressionRequest] per size, with placeholder values of every model input."""
    from tensorflow_serving.apis import predict_pb2, regression_pb2

    from crocodile.serving.examples import make_example
    from crocodile.serving.tensor_protos import to_tensor_proto
    requests = []
    for size in sizes:
        rows = [{key: _placeholder_value(key, spec, i, feature_config.num_domains)
                 for key, spec in feature_spec.items()} for i in range(size)]
        predict = predict_pb2.PredictRequest()
        predict.model_spec.signature_name = "serving_default"
        predict.inputs["examples"].CopyFrom(to_tensor_proto(
            np.array([make_example(row).SerializeToString() for row in rows], dtype=object)))
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.signature_name = "regress"
        with_context = regress.input.example_list_with_context
        with_context.context.CopyFrom(make_example({k: v for k, v in rows[0].items() if k in WARMUP_CONTEXT_KEYS}))
        for row in rows:
            with_context.examples.add().CopyFrom(
                make_example({k: v for k, v in row.items() if k not in WARMUP_CONTEXT_KEYS}))
        requests += [predict, regress]
    return requests


def _rewrite_fingerprint(export_dir: str) -> None:
    """fingerprint.pb from the saved_model.pb now on disk (TF 2.16 writes it before our rewrite)."""
    from tensorflow.python.saved_model import fingerprinting_utils
    fingerprinting_utils.write_fingerprint(export_dir)


def export_serving_model(network, tft_output, feature_config: FeatureConfig, export_dir: str) -> str:
    """Writes the serving SavedModel (with warmup requests) to ``export_dir`` and returns it."""
    module = ServingModule(
        network=network,
        tft_layer=tft_output.transform_features_layer(),
        feature_spec=serving_feature_spec(tft_output, feature_config),
        input_keys=model_input_keys(feature_config),
    )
    signatures = {
        "serving_default": module.serve_examples.get_concrete_function(),
        "regress": module.regress.get_concrete_function(),
        "transform_features": module.transform_features.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    _set_method_name(export_dir, "regress", REGRESS_METHOD_NAME)
    _rewrite_fingerprint(export_dir)
    from crocodile.serving import warmup
    warmup.write_warmup_requests(export_dir, warmup_requests(module._feature_spec, feature_config,
                                                             warmup_batch_sizes()))
    return export_dir
