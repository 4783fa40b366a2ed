"""End to end: `crocodile pipeline run` on generated world logs, checked through ML Metadata.

One pipeline root is shared by the module: the first run (a small Crocodile model) has no
baseline (nothing pushed yet), must be blessed and pushed; a second run with a crippled
model reuses the cached ExampleGen, StatisticsGen and Transform, is compared by the
BlessingGate with the pushed version, must not be blessed, and must leave the pushed
version untouched.
"""
import contextlib
import glob
import hashlib
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.orchestration import metadata

from crocodile.cli import main
from crocodile.model import registry
from crocodile.model.features import FeatureConfig
from crocodile.pipeline import trainer
from crocodile.serving.examples import make_example

pytestmark = pytest.mark.slow

SMALL_HPARAMS = {"embedding_dim": 8, "num_embedding_sets": 2, "expert_units": [16], "tower_units": [8],
                 "prior_embedding_dim": 8, "batch_size": 256, "epochs": 2,
                 "learning_rate": 0.01}
# In-process Beam: on two shared cores, starting Beam worker processes for each of the
# five Beam components costs minutes for these few rows. The multi-processing default
# runs in benchmarks/pipeline.py and `make demo`.
BEAM_ARGS = ["--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"]
COMPONENTS = {"CsvExampleGen", "StatisticsGen", "SchemaGen", "CuratedSchemaGen", "ExampleValidator",
              "AnomaliesGate", "Transform", "Trainer", "Evaluator", "BlessingGate", "Pusher"}
COMPLETE, CACHED = 3, 5  # ml_metadata Execution.State


def run_cli(args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


def executions_by_node(pipeline_root):
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(pipeline_root, "metadata.sqlite"))
    with metadata.Metadata(config) as m:
        return {c.name.split(".", 1)[1]: sorted(m.store.get_executions_by_context(c.id), key=lambda e: e.id)
                for c in m.store.get_contexts_by_type("node")}


def latest_artifact_uri(pipeline_root, type_name):
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(pipeline_root, "metadata.sqlite"))
    with metadata.Metadata(config) as m:
        return max(m.store.get_artifacts_by_type(type_name), key=lambda a: a.id).uri


def file_states(folder):
    """{relative path: (sha256, mtime_ns)} of every file under ``folder``."""
    states = {}
    for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                states[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(),
                                                         os.stat(path).st_mtime_ns)
    return states


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, generate_world_logs):
    base = tmp_path_factory.mktemp("pipeline")
    data = generate_world_logs(str(base / "data"), impressions=20000, users=400, items=150)
    paths = {"data": data, "root": str(base / "root"), "serving": str(base / "serving")}
    code, output = run_cli(["pipeline", "run", "--data", data, "--model", "crocodile",
                            "--pipeline-root", paths["root"], "--serving-dir", paths["serving"],
                            "--hparams", json.dumps(SMALL_HPARAMS), *BEAM_ARGS])
    return {**paths, "code": code, "output": output}


def test_first_run_is_blessed_and_pushed_to_a_versioned_base_path(first_run):
    assert first_run["code"] == 0, first_run["output"]
    assert "model blessed: yes" in first_run["output"], first_run["output"]
    versions = os.listdir(os.path.join(first_run["serving"], "crocodile"))
    assert len(versions) == 1 and versions[0].isdigit()
    pushed = os.path.join(first_run["serving"], "crocodile", versions[0])
    assert os.path.exists(os.path.join(pushed, "saved_model.pb"))
    assert f"pushed to: {pushed}" in first_run["output"]
    assert "no baseline (nothing pushed yet)" in first_run["output"]


def test_every_component_ran_once_and_succeeded(first_run):
    executions = executions_by_node(first_run["root"])
    assert set(executions) == COMPONENTS
    for node, node_executions in executions.items():
        assert [e.last_known_state for e in node_executions] == [COMPLETE], node


def _restored_network(root, config):
    """The trained Keras network, rebuilt from the registry and the Trainer's checkpoint."""
    import tensorflow_transform as tft
    from crocodile.pipeline.preprocessing import vocab_sizes

    run_dir = latest_artifact_uri(root, "ModelRun")
    with open(os.path.join(run_dir, trainer.RUN_INFO_FILENAME)) as f:
        info = json.load(f)
    tft_output = tft.TFTransformOutput(latest_artifact_uri(root, "TransformGraph"))
    model = registry.build_model(info["model_name"], config, vocab_sizes(tft_output, config), info["hparams"])
    return model.network, tft_output, trainer.network_checkpoint_path(run_dir)


def test_pushed_model_scores_raw_examples_like_the_trained_network(first_run):
    config = FeatureConfig.load(os.path.join(first_run["data"], "feature_config.json"))
    rows = pd.read_csv(os.path.join(first_run["data"], "logs", "part-00000.csv"), nrows=50,
                       dtype={k: str for k in config.categorical})
    # Whole log rows, label and log-only columns included: serving must ignore them.
    examples = tf.constant([make_example(row).SerializeToString() for row in rows.to_dict("records")])

    network, tft_output, checkpoint = _restored_network(first_run["root"], config)
    raw_spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k in config.raw_feature_columns}
    transformed = tft_output.transform_raw_features(tf.io.parse_example(examples, raw_spec))
    features = {k: v for k, v in transformed.items() if k.endswith("_xf")}
    network(features, training=False)  # creates the variables, then restore the trained values
    tf.train.Checkpoint(network=network).read(checkpoint).assert_existing_objects_matched()
    expected = network(features, training=False)["probability"].numpy().reshape(-1)

    version = os.listdir(os.path.join(first_run["serving"], "crocodile"))[0]
    loaded = tf.saved_model.load(os.path.join(first_run["serving"], "crocodile", version))
    served = loaded.signatures["serving_default"](examples=examples)["outputs"].numpy()
    regressed = loaded.signatures["regress"](inputs=examples)["outputs"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(regressed, expected, atol=1e-5)
    assert np.std(expected) > 0  # a trained model, not a constant


def test_worse_model_is_not_blessed_and_the_pushed_version_stays_untouched(first_run):
    before = file_states(first_run["serving"])
    crippled = dict(SMALL_HPARAMS, learning_rate=1e-9, epochs=1)
    code, output = run_cli(["pipeline", "run", "--data", first_run["data"], "--model", "crocodile",
                            "--pipeline-root", first_run["root"], "--serving-dir", first_run["serving"],
                            "--train-steps", "1", "--eval-steps", "2",
                            "--hparams", json.dumps(crippled), *BEAM_ARGS])
    assert code == 0, output
    assert "model blessed: no" in output and "pushed: no" in output, output
    assert "significantly below" in output  # the failed check is named, with its interval
    assert file_states(first_run["serving"]) == before
    # The gate compared with the served version, and its JSON holds every number.
    (version,) = os.listdir(os.path.join(first_run["serving"], "crocodile"))
    blessing_uri = latest_artifact_uri(first_run["root"], "ModelBlessing")
    assert "/BlessingGate/" in blessing_uri and os.path.exists(os.path.join(blessing_uri, "NOT_BLESSED"))
    with open(os.path.join(blessing_uri, "blessing.json")) as f:
        decision = json.load(f)
    assert decision["baseline_model"] == os.path.join(first_run["serving"], "crocodile", version)
    assert decision["blessed"] is False and decision["reasons"]
    assert set(decision["domains"]) == {"0", "1", "2", "3", "4"}
    assert decision["overall"]["ci_high"] < 0  # a model that learned nothing is clearly worse
    for domain, result in decision["domains"].items():
        assert f"domain {domain}" in output and result["status"] in output
    executions = executions_by_node(first_run["root"])
    for cached in ("CsvExampleGen", "StatisticsGen", "Transform"):
        assert [e.last_known_state for e in executions[cached]] == [COMPLETE, CACHED], cached
    assert [e.last_known_state for e in executions["Trainer"]] == [COMPLETE, COMPLETE]


def test_model_compare_takes_the_gates_decision_on_the_same_eval_rows(first_run):
    """`crocodile model compare` on the pipeline's eval split reproduces the BlessingGate's numbers."""
    blessing_uri = latest_artifact_uri(first_run["root"], "ModelBlessing")
    with open(os.path.join(blessing_uri, "blessing.json")) as f:
        gate = json.load(f)
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
        os.path.join(first_run["root"], "metadata.sqlite"))
    with metadata.Metadata(config) as m:  # ExampleGen's raw examples, not Transform's output
        (examples,) = [a.uri for a in m.store.get_artifacts_by_type("Examples") if "/CsvExampleGen/" in a.uri]
    code, output = run_cli(["model", "compare", "--baseline", gate["baseline_model"],
                            "--candidate", gate["candidate_model"], "--data", examples, "--domains", "5", "--json"])
    assert code == 0, output
    compared = json.loads(output)
    assert compared["blessed"] is gate["blessed"] is False
    assert compared["reasons"] == gate["reasons"]
    assert compared["eval_rows"] == gate["eval_rows"]
    for key in ("diff", "se", "ci_low", "ci_high", "baseline_auc", "candidate_auc"):
        assert compared["overall"][key] == pytest.approx(gate["overall"][key], abs=1e-9), key
    assert {d: r["status"] for d, r in compared["domains"].items()} == \
        {d: r["status"] for d, r in gate["domains"].items()}


def test_training_split_columns_are_the_train_split_through_the_transform(first_run):
    """EDDA's training columns: every training row once, in file order, the label as logged."""
    import tensorflow_transform as tft
    from crocodile.model.edda import EDDAModel
    from crocodile.pipeline import model_compare

    config = FeatureConfig.load(os.path.join(first_run["data"], "feature_config.json"))
    tft_output = tft.TFTransformOutput(latest_artifact_uri(first_run["root"], "TransformGraph"))
    train_split = os.path.join(latest_artifact_uri(first_run["root"], "Examples"), "Split-train")
    columns = trainer.training_split_columns([os.path.join(train_split, "*")], tft_output, config,
                                             EDDAModel.training_data_columns)
    raw = model_compare.examples_split_rows(train_split)
    assert set(columns) == set(EDDAModel.training_data_columns)
    assert all(len(v) == len(raw) for v in columns.values())
    np.testing.assert_array_equal(columns["click"], raw.labels)
    np.testing.assert_array_equal(columns["domain_id_xf"], raw.domains)
    assert columns["user_id_xf"].min() >= 0 and len(np.unique(columns["user_id_xf"])) > 1


def test_trainer_is_reproducible_from_hparams_seed(first_run, tmp_path):
    """The same split, hparams and seed train the same weights; another seed trains others."""
    import types
    from crocodile.pipeline.pipeline import trainer_custom_config

    config = FeatureConfig.load(os.path.join(first_run["data"], "feature_config.json"))
    examples = latest_artifact_uri(first_run["root"], "Examples")

    def train(name, seed):
        run_dir = tmp_path / name
        fn_args = types.SimpleNamespace(
            custom_config=trainer_custom_config(config, "crocodile", dict(SMALL_HPARAMS, seed=seed)),
            train_files=[os.path.join(examples, "Split-train", "*")],
            eval_files=[os.path.join(examples, "Split-eval", "*")], train_steps=6, eval_steps=2,
            transform_graph_path=latest_artifact_uri(first_run["root"], "TransformGraph"),
            model_run_dir=str(run_dir / "run"), serving_model_dir=str(run_dir / "serving"))
        trainer.run_fn(fn_args)
        checkpoint = trainer.network_checkpoint_path(fn_args.model_run_dir)
        return {key: tf.train.load_variable(checkpoint, key) for key, _ in tf.train.list_variables(checkpoint)
                if key.startswith("network/")}

    first, again, other = train("a", 0), train("b", 0), train("c", 1)
    assert first.keys() == again.keys() == other.keys() and len(first) > 5
    for key in first:
        np.testing.assert_allclose(first[key], again[key], rtol=0, atol=1e-6, err_msg=key)
    assert max(float(np.max(np.abs(first[k] - other[k]))) for k in first) > 1e-3
