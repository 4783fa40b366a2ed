"""Constants and defaults of the TFX pipeline, in one place.

The pipeline factory (``pipeline.py``), the trainer (``trainer.py``), the runners
(``runners.py``), the CLI and the benchmark read these names; nothing else hard-codes
them.
"""
# Kubeflow Pipelines accepts only [a-z0-9][a-z0-9-]{0,127} as a pipeline name.
PIPELINE_NAME = "crocodile"
# Model name on TF Serving: the pushed layout is <serving_dir>/<SERVING_MODEL_NAME>/<version>/.
SERVING_MODEL_NAME = "crocodile"
# Registry name of the model trained when none is given (crocodile.model.registry).
DEFAULT_MODEL = "crocodile"

# Dotted paths: Transform and Trainer import these from the installed package (no module
# file, so no user-module wheel is built and the Docker image needs nothing extra).
PREPROCESSING_FN = "crocodile.pipeline.preprocessing.preprocessing_fn"
RUN_FN = "crocodile.pipeline.trainer.run_fn"

# ExampleGen output split by hash buckets: 4/5 train, 1/5 eval (same share as
# crocodile.pipeline.transform_local's default eval_fraction).
TRAIN_SPLIT, EVAL_SPLIT = "train", "eval"
SPLIT_BUCKETS = {TRAIN_SPLIT: 4, EVAL_SPLIT: 1}
EVAL_FRACTION = SPLIT_BUCKETS[EVAL_SPLIT] / sum(SPLIT_BUCKETS.values())

# Trainer budget. None (the default): each epoch is one pass over the training split
# (steps from its row count), validation one pass over the eval split, up to the model's
# hparams.epochs, ended by early stopping on validation AUC (trainer.training_budget).
# A number: optimiser steps over all epochs (split evenly) / validation batches per epoch.
# Batch size and epochs are model hyperparameters (crocodile.model.hparams), overridable
# with --hparams.
TRAIN_STEPS = None
EVAL_STEPS = None
# tf.distribute strategy for the trainer: "auto" = MultiWorkerMirrored when TF_CONFIG names
# several workers, Mirrored when GPUs are visible, else the default (one-device) strategy.
DISTRIBUTION_STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
DEFAULT_DISTRIBUTION_STRATEGY = "auto"

# Evaluator (TFMA): metrics and plots only, overall and per domain_id slice. It gates
# nothing; the BlessingGate after it decides (crocodile.pipeline.blessing).
LABEL_KEY = "click"
PREDICTION_KEY = "outputs"
SLICE_FEATURE = "domain_id"

# Blessing (BlessingGate and `crocodile model compare`: one decision,
# crocodile.model.comparison.blessing_decision on the eval rows, clustered by user_id).
# The candidate must beat a random ranker overall (absolute check, always; the only check
# when nothing has been pushed yet), and against the currently served model it is refused
# only when a domain's AUC is significantly lower (one-sided, Holm across domains) by more
# than the rule's domain tolerance, or the overall AUC by more than its overall tolerance;
# domains with too few eval clicks are reported as "insufficient evidence", not tested.
# The thresholds' defaults and their reasons live in one place: crocodile.model.comparison.BlessingRule.
BLESSING_GATE_ID = "BlessingGate"  # node id (its outputs live under <pipeline_root>/BlessingGate/)
OVERALL_AUC_LOWER_BOUND = 0.5


def blessing_rule(**overrides):
    """The pipeline's BlessingRule: its defaults, with the overrides that are not None."""
    from crocodile.model.comparison import BlessingRule

    return BlessingRule(**{k: v for k, v in overrides.items() if v is not None})


# Beam. Transform, StatisticsGen, Evaluator etc. run on Beam. Worker processes inherit the
# launching process's environment, which has TF_USE_LEGACY_KERAS=1 (crocodile/__init__.py).
# The DirectRunner is sized to the machine and the data (direct_runner_args). Each Beam
# component starting worker processes pays ~5-7 s (each imports TensorFlow); in return
# the workers read shards in parallel and TFMA's per-example metrics run on every core.
# Measured on 2 cores (benchmarks/pipeline.py, whole pipeline, in-process vs 2 workers):
# 50k log rows 49 s vs 75 s, 300k 103 s vs 110 s, 1M 258 s vs 205 s (ExampleGen 64 -> 47 s,
# Evaluator 76 -> 51 s). The row threshold sits between the last two (I).
DIRECT_RUNNER_ARGS = (
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",  # 0 = one worker per CPU core
)
IN_PROCESS_RUNNER_ARGS = (
    "--direct_running_mode=in_memory",
    "--direct_num_workers=1",
)
MULTI_PROCESS_MIN_CPUS = 2
MULTI_PROCESS_MIN_ROWS = 500_000


def direct_runner_args(rows=None, cpus=None) -> tuple:
    """DirectRunner options for ``rows`` log rows on ``cpus`` cores (None: this machine).

    Worker processes, one per core, when the machine has MULTI_PROCESS_MIN_CPUS cores and
    the logs MULTI_PROCESS_MIN_ROWS rows (or the row count is unknown); otherwise one
    in-process worker.
    """
    import os

    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus >= MULTI_PROCESS_MIN_CPUS and (rows is None or rows >= MULTI_PROCESS_MIN_ROWS):
        return ("--direct_running_mode=multi_processing", f"--direct_num_workers={cpus}")
    return IN_PROCESS_RUNNER_ARGS


TFX_IMAGE = "gcr.io/tfx-oss-public/tfx:1.16.0"
# The pipeline image has no default: `pipeline compile --image` is required, because a
# cluster pulls from a registry and an unqualified name would resolve to Docker Hub.
PIPELINE_IMAGE_PLACEHOLDER = "<registry>/crocodile-pipeline:<tag>"
# Templates for other Beam runners (placeholders in <...>); README explains each.
DATAFLOW_ARGS = (
    "--runner=DataflowRunner",
    "--project=<gcp-project>",
    "--region=<region>",
    "--temp_location=gs://<bucket>/tmp",
    "--machine_type=e2-standard-8",
    "--disk_size_gb=50",
    "--experiments=use_runner_v2",
    f"--sdk_container_image={PIPELINE_IMAGE_PLACEHOLDER}",
)
FLINK_ARGS = (
    "--runner=FlinkRunner",
    "--flink_master=<host>:8081",
    "--flink_submit_uber_jar",
    "--parallelism=<N>",
    "--environment_type=DOCKER",
    f"--environment_config={PIPELINE_IMAGE_PLACEHOLDER}",
)
SPARK_ARGS = (
    "--runner=SparkRunner",
    "--spark_rest_url=http://<host>:6066",
    "--spark_submit_uber_jar",
    "--environment_type=DOCKER",
    f"--environment_config={PIPELINE_IMAGE_PLACEHOLDER}",
)
BEAM_ARG_PRESETS = {
    "direct": DIRECT_RUNNER_ARGS,
    "dataflow": DATAFLOW_ARGS,
    "flink": FLINK_ARGS,
    "spark": SPARK_ARGS,
}

# Where the local runner keeps ML Metadata, under the pipeline root.
METADATA_FILENAME = "metadata.sqlite"

# Kubeflow Pipelines storage. Every step runs in its own pod, so nothing may live on a
# pod's own disk. The pipeline root must be an object store the KFP launcher maps
# (gs://, s3://; kubeflow/pipelines backend/src/v2/component/launcher_v2.go,
# LocalPathForURI) that TensorFlow can also open (gs:// built in, s3:// with tensorflow-io).
# Data and push destination may also be paths on a persistent volume claim mounted into
# every step (`pipeline compile --pvc NAME`) at KFP_VOLUME_MOUNT_PATH.
KFP_PIPELINE_ROOT_SCHEMES = ("gs://", "s3://")
KFP_DATA_SCHEMES = ("gs://", "s3://")
KFP_VOLUME_MOUNT_PATH = "/mnt/crocodile"
