"""BlessingGate: the pipeline's blessing, after the Evaluator, read by the Pusher.

Why a custom component: TFMA's thresholds compare point estimates, which refuses a model
exactly as good as the baseline far too often on small domains (issue 9), and TFX's
Resolver, which found the baseline, is a node kind the open-source Kubeflow Pipelines
backend cannot compile. The gate needs neither:

- baseline = the model currently served: the highest integer version under the push
  destination (``<serving_dir>/crocodile/<version>/``, what the Pusher writes and TF
  Serving loads). The lookup is a filesystem listing, so LocalDagRunner and Kubeflow
  (gs://, s3://, a mounted volume) behave the same; nothing pushed yet = no baseline =
  only the absolute check (the first run);
- decision = crocodile.pipeline.model_compare.compare on the eval split of ExampleGen,
  scored by both SavedModels' serving_default (the same code as `crocodile model compare`);
- output = a ModelBlessing artifact with the integer custom property ``blessed`` (1/0),
  which TFX's Pusher checks, a BLESSED or NOT_BLESSED marker file (as the Evaluator
  writes) and ``blessing.json`` with every number behind the decision.

The Evaluator's ``evaluation`` is an input only to order the gate after it (TFMA stays
for metrics and plots); the gate's decision does not read it.
"""
import json
import os

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import standard_artifact_utils
from tfx.utils import path_utils

from crocodile.pipeline import configs, model_compare

DECISION_FILENAME = "blessing.json"
BLESSED_KEY = "blessed"            # what tfx.components.util.model_utils.is_model_blessed reads
BASELINE_KEY = "baseline_model"    # the served version compared against ("" when none)


def read_decision(blessing_uri: str) -> dict:
    with tf.io.gfile.GFile(f"{blessing_uri.rstrip('/')}/{DECISION_FILENAME}") as f:
        return json.load(f)


@tfx.dsl.components.component
def BlessingGate(  # noqa: N802  (TFX component names are class-like)
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    serving_model_dir: tfx.dsl.components.Parameter[str],
    rule: tfx.dsl.components.Parameter[str],
    domain_ids: tfx.dsl.components.Parameter[str],
):
    """Blesses the candidate unless it is significantly worse than the served model."""
    from crocodile.model.comparison import BlessingRule

    split_uri = standard_artifact_utils.get_split_uri([examples], configs.EVAL_SPLIT)
    rows = model_compare.examples_split_rows(split_uri)
    candidate_dir = path_utils.serving_model_path(model.uri)
    baseline_dir = model_compare.latest_version_dir(serving_model_dir)
    decision = model_compare.compare_models(rows, candidate_dir, baseline_dir, BlessingRule(**json.loads(rule)),
                                            json.loads(domain_ids))
    decision["evaluation"] = evaluation.uri
    blessed = bool(decision["blessed"])
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, DECISION_FILENAME), "w") as f:
        json.dump(decision, f, indent=1, default=float)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
        f.write("")
    blessing.set_int_custom_property(BLESSED_KEY, int(blessed))
    blessing.set_string_custom_property(BASELINE_KEY, baseline_dir or "")
    blessing.set_string_custom_property("current_model", model.uri)
