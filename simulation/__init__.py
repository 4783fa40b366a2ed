"""The synthetic multi-domain world, log generation, dataset adapters and the A/B simulator."""
import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
