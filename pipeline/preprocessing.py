"""TFT ``preprocessing_fn``: raw impression logs -> model features.

Referenced by dotted name from the Transform component, and run in-process by
``crocodile.pipeline.transform_local``. The same graph is baked into every exported
SavedModel, so serving applies exactly the training-time transform.

- categorical ``k`` -> ``k_xf``: vocabulary index. Values seen fewer than
  ``vocab_frequency_threshold`` times (10, per the Crocodile paper) map to an OOV bucket.
- numeric ``k`` -> ``k_xf``: z-score of ``log1p(max(x, 0))`` (prices and counts are
  heavy-tailed; the log keeps a few large values from dominating the scale).
- ``domain_id`` -> ``domain_id_xf``: the raw id, checked to lie in ``[0, num_domains)``.
  The check is part of the graph, so an unknown domain fails Transform and, at serving
  time, fails the request with INVALID_ARGUMENT instead of picking a wrong tower.
- ``click`` is passed through (int64) when present; serving requests do not carry it.
"""
from typing import Dict, Optional

import tensorflow as tf
import tensorflow_transform as tft

from crocodile.model.features import (
    DOMAIN_KEY,
    LABEL_KEY,
    WORLD_FEATURES,
    FeatureConfig,
    transformed_name,
)

CUSTOM_CONFIG_FEATURES_KEY = "feature_config"


def feature_config_from_custom_config(custom_config: Optional[dict]) -> FeatureConfig:
    """The feature config carried in a TFX ``custom_config`` (world defaults if absent)."""
    if custom_config and custom_config.get(CUSTOM_CONFIG_FEATURES_KEY):
        return FeatureConfig.from_dict(custom_config[CUSTOM_CONFIG_FEATURES_KEY])
    return WORLD_FEATURES


def _as_dense_vector(tensor, default_value) -> tf.Tensor:
    """A [N] dense tensor from a [N], [N, 1] dense or a [N, 1] sparse feature.

    Inferred schemas give VarLen (sparse) features; curated schemas give fixed [N, 1].
    Missing values get ``default_value`` (like the TFX taxi template's fill-in).
    """
    if isinstance(tensor, tf.SparseTensor):
        tensor = tf.sparse.to_dense(
            tf.SparseTensor(tensor.indices, tensor.values, [tensor.dense_shape[0], 1]),
            default_value,
        )
    return tf.reshape(tensor, [-1])


def preprocessing_fn(inputs: Dict[str, tf.Tensor], custom_config: Optional[dict] = None):
    """TFT preprocessing: see the module docstring for what each column becomes."""
    config = feature_config_from_custom_config(custom_config)
    outputs = {}
    for key in config.categorical:
        values = _as_dense_vector(inputs[key], b"")
        outputs[transformed_name(key)] = tft.compute_and_apply_vocabulary(
            values,
            frequency_threshold=config.vocab_frequency_threshold,
            num_oov_buckets=config.num_oov_buckets,
            vocab_filename=key,
        )
    for key in config.numeric:
        values = tf.cast(_as_dense_vector(inputs[key], 0.0), tf.float32)
        outputs[transformed_name(key)] = tft.scale_to_z_score(tf.math.log1p(tf.maximum(values, 0.0)))

    domain = tf.cast(_as_dense_vector(inputs[DOMAIN_KEY], -1), tf.int64)
    domain_checks = [
        tf.debugging.assert_non_negative(
            domain, message=f"{DOMAIN_KEY} must be >= 0 (unknown domain id)"),
        tf.debugging.assert_less(
            domain, tf.constant(config.num_domains, tf.int64),
            message=f"{DOMAIN_KEY} must be < {config.num_domains} (unknown domain id)"),
    ]
    with tf.control_dependencies(domain_checks):
        outputs[transformed_name(DOMAIN_KEY)] = tf.identity(domain)

    if LABEL_KEY in inputs:
        outputs[LABEL_KEY] = tf.cast(_as_dense_vector(inputs[LABEL_KEY], 0), tf.int64)
    return outputs


def vocab_sizes(tft_output: tft.TFTransformOutput, config: FeatureConfig) -> Dict[str, int]:
    """Embedding-table rows per categorical feature: vocabulary size plus OOV buckets."""
    return {
        key: tft_output.vocabulary_size_by_name(key) + config.num_oov_buckets
        for key in config.categorical
    }
