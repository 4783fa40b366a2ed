"""`crocodile pipeline compile`: a KFP v2 PipelineSpec YAML that kfp loads, every component on our image.

Offline: no Kubeflow cluster is reachable from here, so the YAML is checked the way
kfp.Client reads it before uploading (strict proto parse of the first YAML document).
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
                  "AnomaliesGate", "Transform", "Trainer", "Evaluator", "Pusher"}
# The latest-blessed-model Resolver compiles into two resolver tasks that run no container.
RESOLVER_TASKS = {"latest_blessed_model_resolver-model-resolver",
                  "latest_blessed_model_resolver-model-blessing-resolver"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "crocodile.yaml"
    code = main(["pipeline", "compile", "--out", str(out), "--image", IMAGE, "--model", "mmoe",
                 "--data", "gs://bucket/logs-day", "--pipeline-root", "gs://bucket/root",
                 "--serving-dir", "gs://bucket/serving", "--threshold-domains", "0,1",
                 "--train-steps", "500", "--beam-arg=--runner=DataflowRunner", "--beam-arg=--project=p"])
    assert code == 0
    with open(out) as f:
        document = yaml.safe_load(f)
    return {"path": str(out), "spec": json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())}


def test_yaml_loads_as_kfp_client_loads_it(compiled):
    pipeline_doc = kfp_client._extract_pipeline_yaml(compiled["path"])
    assert pipeline_doc.pipeline_spec.pipeline_info.name == "crocodile"
    assert pipeline_doc.pipeline_spec.schema_version == "2.0.0"


def test_every_component_runs_on_the_configured_image(compiled):
    spec = compiled["spec"]
    assert set(spec.root.dag.tasks) == EXECUTOR_TASKS | RESOLVER_TASKS
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    containers = {name: e["container"] for name, e in executors.items() if "container" in e}
    assert {name.removesuffix("_executor") for name in containers} == EXECUTOR_TASKS
    assert {c["image"] for c in containers.values()} == {IMAGE}
    assert {name.removesuffix("_executor") for name, e in executors.items() if "resolver" in e} == RESOLVER_TASKS


def test_run_settings_reach_the_components(compiled):
    executors = json_format.MessageToDict(compiled["spec"].deployment_spec)["executors"]
    transform_args = executors["Transform_executor"]["container"]["args"]
    assert "--runner=DataflowRunner" in transform_args
    assert "--direct_running_mode=multi_processing" not in transform_args  # a runner replaces the defaults
    gate_args = executors["AnomaliesGate_executor"]["container"]["args"]
    assert "crocodile.pipeline.components.AnomaliesGate_Executor" in gate_args
    text = json.dumps(json_format.MessageToDict(compiled["spec"]))
    for expected in ("crocodile.pipeline.trainer.run_fn", "crocodile.pipeline.preprocessing.preprocessing_fn",
                     "gs://bucket/logs-day/logs", "gs://bucket/serving/crocodile"):
        assert expected in text, expected
    parameters = compiled["spec"].root.dag.tasks["Evaluator"].inputs.parameters
    eval_config = json.loads(parameters["eval_config"].runtime_value.constant_value.string_value)
    (auc,) = [m for m in eval_config["metrics_specs"][0]["metrics"] if m["class_name"] == "AUC"]
    assert [t["slicing_specs"][0].get("feature_values") for t in auc["per_slice_thresholds"]] == [
        None, {"domain_id": "0"}, {"domain_id": "1"}]
    trainer = compiled["spec"].root.dag.tasks["Trainer"].inputs.parameters
    custom_config = json.loads(trainer["custom_config"].runtime_value.constant_value.string_value)
    assert custom_config["model_name"] == "mmoe"

def test_json_output_is_refused_with_a_message(tmp_path, capsys):
    assert main(["pipeline", "compile", "--out", str(tmp_path / "p.json"), "--image", IMAGE]) == 2
    assert ".yaml" in capsys.readouterr().err
