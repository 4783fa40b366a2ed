"""Experiment drivers: the quality and training-speed benchmarks behind `crocodile benchmark`.

Installed as ``crocodile.benchmarks`` so the command can import them; the scripts beside
these modules print JSON and are what `make bench` runs. They sit outside ``model/``
because they read world logs and run the pipeline's transform, which the model package
must not know about.
"""
import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
