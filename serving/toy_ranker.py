"""A small REAL SavedModel with the production signatures, for tests and benchmarks.

Same interface as ``crocodile.serving.export`` writes (CONTRACTS "Export"): ``serving_default``
(``examples`` [N] serialized tf.Example -> ``outputs`` float32 [N]) and ``regress``
(``inputs`` -> ``outputs``). It parses the canonical raw features of a FeatureConfig with
``tf.io.parse_example``, so a missing or mistyped feature fails inside the graph exactly as in
the exported model, and a domain id outside [0, num_domains) fails an in-graph assertion
(InvalidArgument), as the TFT layer's range check does. The scorer itself is a hashed
linear model: enough to give every version its own, reproducible scores.
"""
import numpy as np
import tensorflow as tf

from crocodile.model.features import DOMAIN_KEY, WORLD_FEATURES, FeatureConfig

HASH_BUCKETS = 101


def feature_spec(feature_config: FeatureConfig) -> dict:
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in feature_config.categorical}
    spec.update({key: tf.io.FixedLenFeature([], tf.float32) for key in feature_config.numeric})
    spec[DOMAIN_KEY] = tf.io.FixedLenFeature([], tf.int64)
    return spec


class ExampleScoringModule(tf.Module):
    """A tf.Module serving the production signatures; subclasses define ``_probability``."""

    def _probability(self, serialized):
        raise NotImplementedError

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        return {"outputs": self._probability(examples)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._probability(inputs)}

    def save(self, export_dir: str) -> str:
        """Writes the SavedModel with ``serving_default`` and ``regress``; returns ``export_dir``."""
        tf.saved_model.save(self, export_dir, signatures={
            "serving_default": self.serve.get_concrete_function(),
            "regress": self.regress.get_concrete_function(),
        })
        return export_dir


class ToyRanker(ExampleScoringModule):
    def __init__(self, feature_config: FeatureConfig, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self._config = feature_config
        self._spec = feature_spec(feature_config)
        self.embeddings = {key: tf.Variable(rng.normal(0, 0.5, HASH_BUCKETS).astype("float32"))
                           for key in feature_config.categorical}
        self.numeric_weights = tf.Variable(rng.normal(0, 0.3, len(feature_config.numeric)).astype("float32"))
        self.domain_bias = tf.Variable(rng.normal(-2.0, 0.5, feature_config.num_domains).astype("float32"))

    def _probability(self, serialized):
        features = tf.io.parse_example(serialized, self._spec)
        domain = features[DOMAIN_KEY]
        num_domains = self._config.num_domains
        checks = [tf.debugging.assert_non_negative(domain, message=f"domain_id must be in [0, {num_domains})"),
                  tf.debugging.assert_less(domain, tf.constant(num_domains, tf.int64),
                                           message=f"domain_id must be in [0, {num_domains})")]
        with tf.control_dependencies(checks):  # the range check runs before any lookup by domain
            domain = tf.identity(domain)
        logit = tf.gather(self.domain_bias, domain)
        for key in self._config.categorical:
            bucket = tf.strings.to_hash_bucket_fast(features[key], HASH_BUCKETS)
            logit += tf.gather(self.embeddings[key], bucket)
        for index, key in enumerate(self._config.numeric):
            logit += self.numeric_weights[index] * tf.math.log1p(tf.maximum(features[key], 0.0))
        return tf.sigmoid(logit)

def save_toy_ranker(export_dir: str, seed: int, feature_config: FeatureConfig = WORLD_FEATURES) -> str:
    """Writes a SavedModel to ``export_dir`` (e.g. ``<base>/<version>``) and returns the path."""
    return ToyRanker(feature_config, seed).save(export_dir)
