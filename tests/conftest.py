"""Test configuration shared by every test module.

TF_USE_LEGACY_KERAS must be set before TensorFlow is imported anywhere (DESIGN
section 3), so it is set here, at collection time, before any test module loads.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
