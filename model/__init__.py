"""Crocodile and baseline multi-domain CTR models (Keras 2 / tf_keras)."""
import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
