"""Crocodile multi-domain ranking system.

TFX 1.16, TFT 1.16 and TFRS 0.7.7 need Keras 2 (``tf_keras``). TensorFlow picks the
Keras flavour from ``TF_USE_LEGACY_KERAS`` when ``tf.keras`` is first touched, so it is
set here, before any submodule can import TensorFlow. Every subpackage imports this
package first (Python imports parents before children), which makes every entry point
safe: the CLI, tests, Beam workers and the Docker images (which also set it in ENV).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
