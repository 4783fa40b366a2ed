"""The TFX pipeline: logs -> validated, transformed examples -> model -> evaluation -> push.

``create_pipeline`` only builds the DAG; ``runners.py`` runs it locally (LocalDagRunner)
or compiles it for Kubeflow Pipelines (KubeflowV2DagRunner).

    ExampleGen (CSV | TFRecord; hash split train/eval)
      -> StatisticsGen -> SchemaGen -> CuratedSchemaGen   (or ImportSchemaGen from a file)
      -> ExampleValidator -> AnomaliesGate (raises on anomalies: bad logs stop here)
      -> Transform (crocodile.pipeline.preprocessing.preprocessing_fn)
      -> Trainer (crocodile.pipeline.trainer.run_fn)
      -> Evaluator (TFMA by domain: metrics and plots)
      -> BlessingGate (candidate vs the served model under the push destination,
                       paired per-domain AUC test; crocodile.pipeline.blessing)
      -> Pusher (only a blessed model; <serving_dir>/crocodile/<version>/)

No Resolver node: the compiled Kubeflow YAML holds container executors only, which the
open-source KFP backend runs (tests/pipeline/test_kubeflow_replay.py replays it).
"""
import dataclasses
import json
import os
from typing import Mapping, Optional, Sequence

from tfx import v1 as tfx

from crocodile.model.features import FeatureConfig
from crocodile.model.comparison import BlessingRule
from crocodile.pipeline import configs, evaluation
from crocodile.pipeline.blessing import BlessingGate
from crocodile.pipeline.components import AnomaliesGate, CuratedSchemaGen
from crocodile.pipeline.data_source import CSV, TFRECORD


def _example_gen(input_base: str, input_format: str):
    output_config = tfx.proto.Output(split_config=tfx.proto.SplitConfig(splits=[
        tfx.proto.SplitConfig.Split(name=name, hash_buckets=buckets)
        for name, buckets in configs.SPLIT_BUCKETS.items()]))
    if input_format == CSV:
        return tfx.components.CsvExampleGen(input_base=input_base, output_config=output_config)
    if input_format == TFRECORD:  # serialized tf.Example, exact types (gzip by file suffix)
        return tfx.components.ImportExampleGen(input_base=input_base, output_config=output_config)
    raise ValueError(f"input_format must be {CSV!r} or {TFRECORD!r}, got {input_format!r}")


def trainer_custom_config(feature_config: FeatureConfig, model_name: str,
                          hparams: Optional[Mapping] = None,
                          distribution_strategy: str = configs.DEFAULT_DISTRIBUTION_STRATEGY) -> dict:
    """What ``trainer.run_fn`` reads from ``fn_args.custom_config``.

    ``hparams`` overrides the model's defaults (crocodile.model.hparams.HParams fields,
    including ``batch_size`` and ``epochs``).
    """
    if distribution_strategy not in configs.DISTRIBUTION_STRATEGIES:
        raise ValueError(f"distribution_strategy must be one of {configs.DISTRIBUTION_STRATEGIES}")
    return {
        "feature_config": feature_config.to_dict(),
        "model_name": model_name,
        "hparams": dict(hparams or {}),
        "distribution_strategy": distribution_strategy,
    }


def create_pipeline(
    *,
    pipeline_root: str,
    input_base: str,
    serving_dir: str,
    feature_config: FeatureConfig,
    input_format: str = CSV,
    model_name: str = configs.DEFAULT_MODEL,
    hparams: Optional[Mapping] = None,
    train_steps: int = configs.TRAIN_STEPS,
    eval_steps: int = configs.EVAL_STEPS,
    distribution_strategy: str = configs.DEFAULT_DISTRIBUTION_STRATEGY,
    schema_path: Optional[str] = None,
    blessing_rule: Optional[BlessingRule] = None,
    beam_pipeline_args: Sequence[str] = configs.DIRECT_RUNNER_ARGS,
    metadata_connection_config=None,
    enable_cache: bool = True,
    pipeline_name: str = configs.PIPELINE_NAME,
) -> tfx.dsl.Pipeline:
    """The pipeline's DAG. ``input_base`` is the folder of log files (DIR/logs)."""
    example_gen = _example_gen(input_base, input_format)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
        schema_components = [schema_gen]
        schema = schema_gen.outputs["schema"]
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
        curated_schema = CuratedSchemaGen(
            inferred_schema=schema_gen.outputs["schema"],
            feature_config=json.dumps(feature_config.to_dict(), sort_keys=True),
        ).with_id("CuratedSchemaGen")
        schema_components = [schema_gen, curated_schema]
        schema = curated_schema.outputs["schema"]
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema)
    gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"], schema=schema).with_id("AnomaliesGate")
    validated_schema = gate.outputs["validated_schema"]

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=validated_schema,
        preprocessing_fn=configs.PREPROCESSING_FN,
        custom_config={"feature_config": feature_config.to_dict()})
    trainer = tfx.components.Trainer(
        run_fn=configs.RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=validated_schema,
        train_args=tfx.proto.TrainArgs(num_steps=int(train_steps)),
        eval_args=tfx.proto.EvalArgs(num_steps=int(eval_steps)),
        custom_config=trainer_custom_config(
            feature_config, model_name, hparams, distribution_strategy))

    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        schema=validated_schema,
        eval_config=evaluation.build_eval_config())
    serving_model_dir = os.path.join(serving_dir, configs.SERVING_MODEL_NAME)
    rule = blessing_rule or configs.blessing_rule()
    blessing_gate = BlessingGate(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        evaluation=evaluator.outputs["evaluation"],
        serving_model_dir=serving_model_dir,
        rule=json.dumps(dataclasses.asdict(rule), sort_keys=True),
        domain_ids=json.dumps(list(range(feature_config.num_domains))),
    ).with_id(configs.BLESSING_GATE_ID)
    # Pusher checks the gate's blessing itself: a model that is not blessed is recorded as
    # not pushed and nothing is written under the serving directory.
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=blessing_gate.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))

    components = [example_gen, statistics_gen, *schema_components, example_validator, gate,
                  transform, trainer, evaluator, blessing_gate, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args),
    )
