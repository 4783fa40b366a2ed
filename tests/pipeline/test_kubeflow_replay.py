"""Replay of the compiled Kubeflow YAML: every container's exact command line, as the KFP launcher runs it.

No Kubeflow cluster and no Docker engine here, so tests/pipeline/kfp_launcher.py plays the
open-source KFP driver and launcher (its docstring cites the Go sources and lists the
deviations): tasks run in the IR's topological order as separate processes of the
project's environment (what the image installs), with ``{{$}}`` replaced by the
ExecutorInput JSON the driver would build (artifact URIs under the pipeline root,
``runtimeValue.constant`` parameters, upstream artifacts with the metadata their
executors reported). The processes share only the pipeline root and the "volume" folder
(data and push destination, a PVC on a cluster); no Python state, no ML Metadata.

Run 1: a small model, nothing pushed yet -> blessed, pushed, the SavedModel has no
training-only state. Run 2 (same deployment, so KFP's cache serves the unchanged upstream
tasks): a model that learned nothing -> the BlessingGate compares it with the pushed one,
refuses it, and the Pusher writes nothing.
"""
import glob
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from crocodile.cli import main

sys.path.insert(0, os.path.dirname(__file__))
import kfp_launcher  # noqa: E402

pytestmark = pytest.mark.slow

SMALL_HPARAMS = {"embedding_dim": 8, "num_embedding_sets": 2, "expert_units": [16], "tower_units": [8],
                 "prior_embedding_dim": 8, "batch_size": 256, "epochs": 2,
                 "learning_rate": 0.01}
BEAM_ARGS = ["--beam-arg=--direct_running_mode=in_memory", "--beam-arg=--direct_num_workers=1"]
UPSTREAM = ("CsvExampleGen", "StatisticsGen", "SchemaGen", "CuratedSchemaGen", "ExampleValidator",
            "AnomaliesGate", "Transform")
TRAINING_NAME_PARTS = ("optimizer", "adam", "iteration", "disentangle", "covariance", "learning_rate")
TRAINING_OP_TYPES = {"ResourceApplyAdam", "AssignVariableOp", "AssignAddVariableOp"}


def _compile(out, volume, data, hparams, train_steps):
    code = main(["pipeline", "compile", "--out", out, "--image", "registry.example/crocodile-pipeline:replay",
                 "--pipeline-root", "gs://replay-bucket/root", "--pvc", "crocodile-data", "--pvc-mount", volume,
                 "--data", data, "--serving-dir", os.path.join(volume, "serving"), "--model", "crocodile",
                 "--train-steps", str(train_steps), "--eval-steps", "5", "--hparams", json.dumps(hparams),
                 *BEAM_ARGS])
    assert code == 0
    return kfp_launcher.load_spec(out)


def _file_states(folder):
    states = {}
    for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                states[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return states


@pytest.fixture(scope="module")
def replays(tmp_path_factory, generate_world_logs):
    base = tmp_path_factory.mktemp("replay")
    volume = str(base / "volume")
    data = generate_world_logs(os.path.join(volume, "data"), impressions=20000, users=400, items=150)
    good = _compile(str(base / "good.yaml"), volume, data, SMALL_HPARAMS, 120)
    worse = _compile(str(base / "worse.yaml"), volume, data, dict(SMALL_HPARAMS, learning_rate=1e-9, epochs=1), 1)
    # The image's environment (docker/Dockerfile.pipeline ENV) and nothing of this process.
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin", "HOME": str(base),
           "TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    launcher = kfp_launcher.Launcher(str(base / "bucket"), env, str(base / "logs"))
    first = launcher.run(good, run_id="run-1")
    serving = os.path.join(volume, "serving", "crocodile")
    after_first = _file_states(serving)
    second = launcher.run(worse, run_id="run-2")
    return {"bucket": str(base / "bucket"), "good": good, "first": first, "second": second, "serving": serving, "after_first": after_first,
            "data": data}


def _metadata(results, task, key):
    return results[task]["outputs"][key].get("metadata", {})


def test_each_task_ran_the_yamls_exact_command_line(replays):
    spec = replays["good"]
    tasks = spec["root"]["dag"]["tasks"]
    assert kfp_launcher.topological_order(tasks) == list(replays["first"])
    for name, result in replays["first"].items():
        container = spec["deploymentSpec"]["executors"][spec["components"][name]["executorLabel"]]["container"]
        expected = container["command"] + container["args"]
        assert len(result["command"]) == len(expected)
        for ran, compiled in zip(result["command"], expected):
            if compiled == "{{$}}":  # the only placeholder: the ExecutorInput JSON
                output_file = json.loads(ran)["outputs"]["outputFile"]
                assert output_file.startswith(f"{replays['bucket']}/crocodile/run-1/{name}/")
            else:
                assert ran == compiled
        assert not result["cached"]


def test_first_run_pushes_a_loss_free_saved_model(replays):
    first = replays["first"]
    gate = _metadata(first, "BlessingGate", "blessing")
    assert gate["blessed"] == 1 and gate["baseline_model"] == ""
    pushed = _metadata(first, "Pusher", "pushed_model")
    assert pushed["pushed"] == 1
    (version,) = os.listdir(replays["serving"])
    export_dir = os.path.join(replays["serving"], version)
    assert pushed["pushed_destination"] == export_dir
    with open(os.path.join(first["BlessingGate"]["outputs"]["blessing"]["uri"], "blessing.json")) as f:
        decision = json.load(f)
    assert decision["has_baseline"] is False and decision["absolute"]["ok"]

    loaded = tf.saved_model.load(export_dir)
    from crocodile.pipeline.model_compare import data_folder_rows
    rows = data_folder_rows(replays["data"])
    scores = loaded.signatures["serving_default"](examples=tf.constant(list(rows.serialized[:500])))["outputs"].numpy()
    assert np.all((scores > 0) & (scores < 1)) and np.std(scores) > 0
    for key, _ in tf.train.list_variables(os.path.join(export_dir, "variables", "variables")):
        assert not any(part in key.lower() for part in TRAINING_NAME_PARTS), key
    for name in ("serving_default", "regress"):
        graph = loaded.signatures[name].graph.as_graph_def()
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        for node in nodes:
            assert node.op not in TRAINING_OP_TYPES, (name, node.op)
            assert not any(part in node.name.lower() for part in ("covariance", "disentangle")), node.name


def test_worse_model_is_compared_with_the_pushed_one_and_not_pushed(replays):
    second = replays["second"]
    for task in UPSTREAM:  # KFP's cache: same component, same inputs
        assert second[task]["cached"], task
    for task in ("Trainer", "Evaluator", "BlessingGate", "Pusher"):
        assert not second[task]["cached"], task
    (version,) = os.listdir(replays["serving"])
    gate = _metadata(second, "BlessingGate", "blessing")
    assert gate["blessed"] == 0
    assert gate["baseline_model"] == os.path.join(replays["serving"], version)
    assert _metadata(second, "Pusher", "pushed_model")["pushed"] == 0
    assert _file_states(replays["serving"]) == replays["after_first"]
    with open(os.path.join(second["BlessingGate"]["outputs"]["blessing"]["uri"], "blessing.json")) as f:
        decision = json.load(f)
    assert not decision["blessed"] and decision["overall"]["diff"] < 0
    assert any("significantly below" in reason for reason in decision["reasons"]), decision["reasons"]
