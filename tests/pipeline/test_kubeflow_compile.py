"""`crocodile pipeline compile`: a KFP v2 PipelineSpec YAML that the open-source Kubeflow Pipelines backend accepts.

Offline: no Kubeflow cluster is reachable from here. The YAML is checked (1) the way
kfp.Client reads it before uploading (strict proto parse of the PipelineSpec and
PlatformSpec documents), and (2) against what the open-source backend's compiler and
driver accept, read from kubeflow/pipelines (commit 7b70c7b, 2026-08):

- backend/src/v2/compiler/visitor.go: a component is a DAG, or its executor is a
  ``container`` (Visitor.Container) or an ``importer`` (Visitor.Importer); anything else
  fails with "non-container and non-importer executor not implemented".
- backend/src/v2/compiler/argocompiler/argo.go: ``Resolver()`` returns
  "resolver not implemented yet" (TFX's Resolver compiles to a resolver executor).
- backend/src/v2/driver/resolve.go, resolveInputParameter: a task parameter's
  ``runtimeValue`` must be ``constant``; the schema-2.0 ``constantValue`` fails with
  "param runtime value spec of type ... not implemented".

tests/pipeline/test_kubeflow_replay.py then runs the compiled containers.
"""
import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.client import client as kfp_client
from kfp.pipeline_spec import pipeline_spec_pb2

from crocodile.cli import main

IMAGE = "registry.example/crocodile-pipeline:test"
EXECUTOR_TASKS = {"CsvExampleGen", "StatisticsGen", "SchemaGen", "CuratedSchemaGen", "ExampleValidator",
                  "AnomaliesGate", "Transform", "Trainer", "Evaluator", "BlessingGate", "Pusher"}
# The node kinds the open-source compiler accepts (visitor.go; see the module docstring).
ACCEPTED_EXECUTOR_KINDS = {"container", "importer"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "crocodile.yaml"
    code = main(["pipeline", "compile", "--out", str(out), "--image", IMAGE, "--model", "mmoe",
                 "--data", "gs://bucket/logs-day", "--pipeline-root", "gs://bucket/root",
                 "--serving-dir", "/mnt/crocodile/serving", "--pvc", "crocodile-data",
                 "--min-clicks", "40", "--statistic", "gauc", "--train-steps", "500",
                 "--beam-arg=--runner=DataflowRunner", "--beam-arg=--project=p"])
    assert code == 0
    with open(out) as f:
        documents = list(yaml.safe_load_all(f))
    return {"path": str(out), "documents": documents,
            "spec": json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())}


def test_yaml_loads_as_kfp_client_loads_it(compiled):
    pipeline_doc = kfp_client._extract_pipeline_yaml(compiled["path"])
    assert pipeline_doc.pipeline_spec.pipeline_info.name == "crocodile"
    assert pipeline_doc.pipeline_spec.schema_version == "2.1.0"
    assert pipeline_doc.pipeline_spec.default_pipeline_root == "gs://bucket/root"
    mounts = json_format.MessageToDict(pipeline_doc.platform_spec)["platforms"]["kubernetes"]["deploymentSpec"]
    executors = compiled["documents"][0]["deploymentSpec"]["executors"]
    assert set(mounts["executors"]) == set(executors)
    for config in mounts["executors"].values():
        assert config["pvcMount"] == [{"mountPath": "/mnt/crocodile", "constant": "crocodile-data",
                                       "pvcNameParameter": {"runtimeValue": {"constant": "crocodile-data"}}}]


def test_every_node_is_a_kind_the_open_source_backend_compiles(compiled):
    spec = compiled["documents"][0]
    executors = spec["deploymentSpec"]["executors"]
    kinds = {}
    for name, component in spec["components"].items():
        kinds[name] = "dag" if "dag" in component else next(iter(executors[component["executorLabel"]]))
    assert set(kinds.values()) <= ACCEPTED_EXECUTOR_KINDS | {"dag"}, kinds
    assert "resolver" not in json.dumps(executors).lower()
    assert set(spec["root"]) == {"dag"}
    # Only runtimeValue.constant parameters (resolve.go rejects constantValue).
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        for name, source in task.get("inputs", {}).get("parameters", {}).items():
            assert set(source) == {"runtimeValue"} and set(source["runtimeValue"]) == {"constant"}, (task_name, name)


def test_every_component_runs_on_the_configured_image(compiled):
    spec = compiled["spec"]
    assert set(spec.root.dag.tasks) == EXECUTOR_TASKS
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert {name.removesuffix("_executor") for name in executors} == EXECUTOR_TASKS
    assert {e["container"]["image"] for e in executors.values()} == {IMAGE}
    for executor in executors.values():
        assert executor["container"]["command"] == [
            "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]


def test_the_pusher_reads_the_blessing_gate_which_runs_after_the_evaluator(compiled):
    tasks = compiled["documents"][0]["root"]["dag"]["tasks"]
    blessing = tasks["Pusher"]["inputs"]["artifacts"]["model_blessing"]["taskOutputArtifact"]
    assert blessing == {"producerTask": "BlessingGate", "outputArtifactKey": "blessing"}
    gate = tasks["BlessingGate"]
    assert {"Evaluator", "Trainer", "CsvExampleGen"} <= set(gate["dependentTasks"])
    parameters = {k: v["runtimeValue"]["constant"] for k, v in gate["inputs"]["parameters"].items()}
    assert parameters["serving_model_dir"] == "/mnt/crocodile/serving/crocodile"
    assert json.loads(parameters["rule"]) == {"alpha": 0.05, "domain_tolerance": 0.01, "min_clicks": 40,
                                              "overall_tolerance": 0.002, "statistic": "gauc"}
    assert json.loads(parameters["domain_ids"]) == [0, 1, 2, 3, 4]
    assert "baseline_model" not in tasks["Evaluator"]["inputs"].get("artifacts", {})


def test_run_settings_reach_the_components(compiled):
    executors = json_format.MessageToDict(compiled["spec"].deployment_spec)["executors"]
    transform_args = executors["Transform_executor"]["container"]["args"]
    assert "--runner=DataflowRunner" in transform_args
    assert "--direct_running_mode=multi_processing" not in transform_args  # a runner replaces the defaults
    assert "crocodile.pipeline.components.AnomaliesGate_Executor" in executors["AnomaliesGate_executor"]["container"]["args"]
    assert "crocodile.pipeline.blessing.BlessingGate_Executor" in executors["BlessingGate_executor"]["container"]["args"]
    text = json.dumps(json_format.MessageToDict(compiled["spec"]))
    for expected in ("crocodile.pipeline.trainer.run_fn", "crocodile.pipeline.preprocessing.preprocessing_fn",
                     "gs://bucket/logs-day/logs", "/mnt/crocodile/serving/crocodile"):
        assert expected in text, expected
    trainer = compiled["documents"][0]["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]
    assert json.loads(trainer["custom_config"]["runtimeValue"]["constant"])["model_name"] == "mmoe"


@pytest.mark.parametrize("flags, message", [
    (["--pipeline-root", "/mnt/crocodile/root"], "--pipeline-root /mnt/crocodile/root"),
    (["--serving-dir", "/srv/models"], "--serving-dir /srv/models"),          # a pod's own disk
    (["--data", "/mnt/elsewhere/data", "--pvc", "v"], "under the volume mount /mnt/crocodile"),
])
def test_locations_no_pod_shares_are_refused(tmp_path, capsys, flags, message):
    args = {"--data": "gs://b/data", "--pipeline-root": "gs://b/root", "--serving-dir": "s3://b/serving"}
    extra = []
    for i in range(0, len(flags), 2):
        if flags[i] in args:
            args[flags[i]] = flags[i + 1]
        else:
            extra += flags[i:i + 2]
    argv = ["pipeline", "compile", "--out", str(tmp_path / "p.yaml"), "--image", IMAGE, *extra]
    for key, value in args.items():
        argv += [key, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_image_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "compile", "--out", str(tmp_path / "p.yaml"), "--data", "gs://b/d",
              "--pipeline-root", "gs://b/r", "--serving-dir", "gs://b/s"])
    assert "--image" in capsys.readouterr().err


def test_json_output_is_refused_with_a_message(tmp_path, capsys):
    assert main(["pipeline", "compile", "--out", str(tmp_path / "p.json"), "--image", IMAGE, "--data", "gs://b/d",
                 "--pipeline-root", "gs://b/r", "--serving-dir", "gs://b/s"]) == 2
    assert ".yaml" in capsys.readouterr().err
