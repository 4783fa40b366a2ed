"""`crocodile pipeline run|compile` (registered by crocodile.cli)."""
import argparse
import json
import os

from crocodile.errors import UserError


def _add_common_arguments(parser) -> None:
    parser.add_argument("--model", default="crocodile", help="model registry name (default: crocodile)")
    parser.add_argument("--hparams", default="{}", help="model hyperparameters as a JSON object")
    parser.add_argument("--train-steps", type=int, default=None,
                        help="optimiser steps over all epochs (default: each epoch is one pass over the "
                             "training split, up to the model's epochs, ended by early stopping)")
    parser.add_argument("--eval-steps", type=int, default=None,
                        help="validation batches per epoch (default: the whole eval split)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs the train steps are split into (early stopping compares them); "
                             "default: the model's hparams")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's hparams")
    parser.add_argument("--strategy", default="auto",
                        choices=("auto", "default", "mirrored", "multi_worker"),
                        help="tf.distribute strategy of the trainer")
    parser.add_argument("--schema", default=None,
                        help="curated schema.pbtxt for ImportSchemaGen (default: inferred, then curated)")
    add_blessing_arguments(parser)
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="Beam pipeline option, repeatable (e.g. --beam-arg=--runner=DataflowRunner); "
                             "without --runner the DirectRunner is sized to the machine and the data "
                             "(pipeline/configs.py: direct_runner_args)")


def add_blessing_arguments(parser) -> None:
    """The blessing rule's knobs (defaults: crocodile.model.comparison.BlessingRule)."""
    from crocodile.model.comparison import STATISTICS, BlessingRule
    group = parser.add_argument_group("blessing rule (default: the pipeline's, see pipeline/README.md)")
    group.add_argument("--domain-tolerance", type=float, default=None,
                       help=f"AUC drop a domain may show before 'significantly worse' counts "
                            f"(default {BlessingRule.domain_tolerance})")
    group.add_argument("--overall-tolerance", type=float, default=None,
                       help=f"the same for the overall AUC (default {BlessingRule.overall_tolerance})")
    group.add_argument("--alpha", type=float, default=None,
                       help=f"one-sided level, Holm across domains (default {BlessingRule.alpha})")
    group.add_argument("--min-clicks", type=int, default=None,
                       help=f"eval clicks a domain needs to be tested; fewer = insufficient evidence "
                            f"(default {BlessingRule.min_clicks})")
    group.add_argument("--statistic", choices=sorted(STATISTICS), default=None,
                       help=f"what the rule tests per domain and overall: auc (pooled over the rows) or gauc "
                            f"(per-user AUC; see pipeline/README.md 'Blessing') (default {BlessingRule.statistic})")


def blessing_rule(args):
    from crocodile.pipeline import configs

    try:
        rule = configs.blessing_rule(domain_tolerance=args.domain_tolerance, overall_tolerance=args.overall_tolerance,
                                     alpha=args.alpha, min_clicks=args.min_clicks, statistic=args.statistic)
    except (TypeError, ValueError) as error:
        raise UserError(f"blessing rule: {error}") from error
    if not (0 < rule.alpha < 1) or rule.domain_tolerance < 0 or rule.overall_tolerance < 0 or rule.min_clicks < 1:
        raise UserError("blessing rule: --alpha must be in (0, 1), tolerances >= 0, --min-clicks >= 1")
    return rule


def register(subparsers) -> None:
    """Adds `pipeline run` and `pipeline compile`. Handlers import TFX lazily."""
    parser = subparsers.add_parser("pipeline", help="TFX pipeline: run locally or compile for Kubeflow")
    commands = parser.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND", required=True)

    run = commands.add_parser(
        "run", help="run the TFX pipeline locally (LocalDagRunner, Beam DirectRunner)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--data", required=True, help="data folder with logs/ and feature_config.json")
    run.add_argument("--pipeline-root", required=True, help="artifacts and ML Metadata (SQLite) go here")
    run.add_argument("--serving-dir", required=True,
                     help="model base path root: blessed models go to SERVING_DIR/crocodile/<version>/")
    run.add_argument("--no-cache", action="store_true", help="re-run every component")
    run.add_argument("--outcome-json", default=None, metavar="FILE",
                     help="also write the run's outcome (blessing, push, the trained model's "
                          "SavedModel folder) to FILE as JSON")
    _add_common_arguments(run)
    run.set_defaults(handler=run_pipeline)

    compile_ = commands.add_parser(
        "compile", help="compile the pipeline for Kubeflow Pipelines (KFP v2 YAML)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    compile_.add_argument("--out", required=True, help="output .yaml (what kfp.Client uploads)")
    compile_.add_argument("--image", required=True,
                          help="registry reference of the pipeline image every step runs "
                               "(docker/Dockerfile.pipeline), e.g. europe-docker.pkg.dev/P/R/crocodile-pipeline:TAG")
    compile_.add_argument("--data", required=True,
                          help="data folder as the pods see it: gs://, s3:// or a path on the --pvc volume")
    compile_.add_argument("--pipeline-root", required=True,
                          help="gs:// or s3:// URI for the artifacts (pass the same value as pipeline_root "
                               "when creating the run)")
    compile_.add_argument("--serving-dir", required=True,
                          help="push destination root (gs://, s3:// or a path on the --pvc volume); "
                               "blessed models go to SERVING_DIR/crocodile/<version>/")
    compile_.add_argument("--pvc", default=None, metavar="NAME",
                          help="persistent volume claim mounted into every step (at --pvc-mount)")
    compile_.add_argument("--pvc-mount", default="/mnt/crocodile", help="where --pvc is mounted")
    compile_.add_argument("--format", choices=("csv", "tfrecord"), default=None,
                          help="log format (default: detected when --data is a local folder, else csv)")
    compile_.add_argument("--feature-config", default=None,
                          help="local feature_config.json (default: DATA's when local, else the world's)")
    _add_common_arguments(compile_)
    compile_.set_defaults(handler=compile_pipeline)


def _hparams(args) -> dict:
    """--hparams JSON plus --epochs/--batch-size, checked against the model's HParams."""
    from crocodile.model import registry
    from crocodile.model.hparams import resolve

    if args.model not in registry.MODEL_NAMES:
        raise UserError(f"--model {args.model!r} is not a registered model; "
                        f"choose from {', '.join(registry.MODEL_NAMES)}")
    try:
        value = json.loads(args.hparams)
    except json.JSONDecodeError as error:
        raise UserError(f"--hparams is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise UserError("--hparams must be a JSON object, e.g. '{\"learning_rate\": 0.001}'")
    if args.epochs is not None:
        value["epochs"] = args.epochs
    if args.batch_size is not None:
        value["batch_size"] = args.batch_size
    try:
        resolve(args.model, value)
    except (ValueError, TypeError) as error:
        raise UserError(f"--hparams: {error}") from error
    return value


def beam_args(user_args, rows=None, local=True) -> list:
    """Runner options, user args last (they win); without --runner, the DirectRunner's.

    Local runs size it to this machine and ``rows``; a compiled pipeline runs elsewhere,
    so it gets one worker process per core of wherever it runs.
    """
    from crocodile.pipeline import configs

    if any(arg.startswith("--runner") for arg in user_args):
        return list(user_args)
    defaults = configs.direct_runner_args(rows) if local else configs.DIRECT_RUNNER_ARGS
    return list(defaults) + list(user_args)


def _pipeline_kwargs(args, feature_config, rows=None, local=True) -> dict:
    if min(args.train_steps or 1, args.eval_steps or 1, args.epochs or 1, args.batch_size or 1) < 1:
        raise UserError("--train-steps, --eval-steps, --epochs and --batch-size must be >= 1")
    if args.schema and not os.path.exists(args.schema) and "://" not in args.schema:
        raise UserError(f"--schema {args.schema}: no such file")
    return dict(
        serving_dir=args.serving_dir, feature_config=feature_config, model_name=args.model,
        hparams=_hparams(args), train_steps=args.train_steps, eval_steps=args.eval_steps,
        distribution_strategy=args.strategy, blessing_rule=blessing_rule(args),
        schema_path=args.schema, beam_pipeline_args=beam_args(args.beam_arg, rows, local))


def run_pipeline(args) -> int:
    from crocodile.pipeline import data_source, runners
    from crocodile.pipeline.components import DataValidationError
    from crocodile.pipeline.pipeline import create_pipeline

    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data}: no such folder")
    feature_config = data_source.load_feature_config(args.data)
    input_format = data_source.detect_format(args.data)
    domain_rows = data_source.count_domains(args.data)
    kwargs = _pipeline_kwargs(args, feature_config, sum(domain_rows.values()) or None)
    pipeline_root = os.path.abspath(args.pipeline_root)
    os.makedirs(pipeline_root, exist_ok=True)
    kwargs["serving_dir"] = os.path.abspath(args.serving_dir)
    pipeline = create_pipeline(
        pipeline_root=pipeline_root,
        input_base=os.path.abspath(data_source.logs_dir(args.data)),
        input_format=input_format,
        metadata_connection_config=runners.metadata_connection_config(pipeline_root),
        enable_cache=not args.no_cache,
        **kwargs)
    print(f"pipeline {pipeline.pipeline_info.pipeline_name}: model {args.model}, {input_format} logs "
          f"in {args.data}, ML Metadata in {runners.metadata_path(pipeline_root)}", flush=True)
    try:
        outcome = runners.run_local(pipeline, verbose=args.verbose)
    except DataValidationError as error:
        raise UserError(str(error)) from error
    print(outcome.describe(), flush=True)
    if args.outcome_json:
        _write_outcome(args.outcome_json, outcome, pipeline_root, args.model)
    return 0


def trained_model_dir(pipeline_root: str):
    """The serving SavedModel the latest Trainer execution produced (pushed or not), or None."""
    from tfx.orchestration import metadata

    from crocodile.pipeline import runners

    with metadata.Metadata(runners.metadata_connection_config(pipeline_root)) as m:
        trainer_runs = [e for c in m.store.get_contexts_by_type("node") if c.name.endswith(".Trainer")
                        for e in m.store.get_executions_by_context(c.id)]
        if not trainer_runs:
            return None
        latest = max(trainer_runs, key=lambda e: e.id)
        outputs = [event.artifact_id for event in m.store.get_events_by_execution_ids([latest.id])
                   if event.type in (event.OUTPUT, event.DECLARED_OUTPUT)]
        models = [a for a in m.store.get_artifacts_by_id(outputs)
                  if m.store.get_artifact_types_by_id([a.type_id])[0].name == "Model"]
    return os.path.join(models[0].uri, "Format-Serving") if models else None


def _write_outcome(path: str, outcome, pipeline_root: str, model: str) -> None:
    """The outcome's fields as they are (whatever the run records), plus the trained model."""
    import dataclasses

    value = dataclasses.asdict(outcome) if dataclasses.is_dataclass(outcome) else dict(vars(outcome))
    value.update(model=model, trained_model_dir=trained_model_dir(pipeline_root))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2, default=str)


def compile_pipeline(args) -> int:
    from crocodile.model.features import WORLD_FEATURES, FeatureConfig
    from crocodile.pipeline import data_source, runners
    from crocodile.pipeline.pipeline import create_pipeline

    try:
        runners.check_kubeflow_storage(args.pipeline_root, args.data, args.serving_dir, args.pvc, args.pvc_mount)
    except ValueError as error:
        raise UserError(str(error)) from error
    local_data = os.path.isdir(args.data)
    if args.feature_config:
        feature_config = FeatureConfig.load(args.feature_config)
    else:
        feature_config = data_source.load_feature_config(args.data) if local_data else WORLD_FEATURES
    input_format = args.format or (data_source.detect_format(args.data) if local_data else "csv")
    pipeline = create_pipeline(
        pipeline_root=args.pipeline_root,
        input_base=f"{args.data.rstrip('/')}/{data_source.LOGS_SUBDIR}",
        input_format=input_format,
        **_pipeline_kwargs(args, feature_config, local=False))
    try:
        path = runners.compile_kubeflow(pipeline, args.out, args.image, args.pvc, args.pvc_mount)
    except ValueError as error:
        raise UserError(str(error)) from error
    volume = f"; volume {args.pvc} at {args.pvc_mount}" if args.pvc else ""
    print(f"wrote {path} (KFP v2 pipeline spec; image {args.image}{volume}); create runs with "
          f"pipeline_root={args.pipeline_root!r} (see pipeline/README.md)")
    return 0
