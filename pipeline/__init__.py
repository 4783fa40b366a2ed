"""TFX pipeline: preprocessing_fn, run_fn, the pipeline factory and its runners."""
import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
