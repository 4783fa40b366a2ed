"""Benchmark: wall time of each TFX component and Transform throughput on generated logs.

Generates world logs (`crocodile data generate`, default 1,000,000 impressions), runs the
whole pipeline once with LocalDagRunner on the Beam DirectRunner (multi-processing, the
CLI default), and reads each component's wall time back from ML Metadata (execution
registration to publication). Transform throughput is the logged rows over Transform's
wall time (it analyses the train split and transforms both splits, so every row passes
through it once for transformation).

One run per size: a pipeline at this size takes many minutes, and the numbers are for
capacity planning, not an A/B comparison. Two shared cores are noisy (DESIGN section 9).

    python benchmarks/pipeline.py [--impressions N] [--work-dir DIR] [--train-steps N]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import crocodile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

SMALL_HPARAMS = {"embedding_dim": 8, "num_embedding_sets": 2, "expert_units": [32], "tower_units": [16],
                 "batch_size": 1024, "epochs": 2}


def component_seconds(pipeline_root: str) -> dict:
    """{node id: seconds} from ML Metadata execution create/update times."""
    from tfx.orchestration import metadata

    from crocodile.pipeline.runners import metadata_connection_config

    with metadata.Metadata(metadata_connection_config(pipeline_root)) as m:
        result = {}
        for context in m.store.get_contexts_by_type("node"):
            for execution in m.store.get_executions_by_context(context.id):
                seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000
                result[context.name.split(".", 1)[1]] = round(seconds, 2)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--work-dir", default="/tmp/crocodile_pipeline_benchmark")
    parser.add_argument("--model", default="crocodile")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--beam-arg", action="append", default=[])
    args = parser.parse_args(argv)

    from crocodile.model.features import FeatureConfig
    from crocodile.pipeline import configs, data_source, runners
    from crocodile.pipeline.cli import beam_args
    from crocodile.pipeline.pipeline import create_pipeline

    work = os.path.abspath(args.work_dir)
    data = os.path.join(work, "data")
    started = time.time()
    if not os.path.exists(os.path.join(data, "logs")):
        subprocess.run([sys.executable, "-m", "crocodile", "data", "generate", "--out", data,
                        "--impressions", str(args.impressions), "--quiet"], check=True)
    generate_s = time.time() - started
    root = os.path.join(work, f"root-{int(time.time())}")
    feature_config = FeatureConfig.load(os.path.join(data, "feature_config.json"))
    pipeline = create_pipeline(
        pipeline_root=root, input_base=data_source.logs_dir(data), input_format=data_source.detect_format(data),
        serving_dir=os.path.join(work, "serving"), feature_config=feature_config, model_name=args.model,
        hparams=SMALL_HPARAMS, train_steps=args.train_steps, eval_steps=20,
        beam_pipeline_args=beam_args(args.beam_arg),
        metadata_connection_config=runners.metadata_connection_config(root), enable_cache=False)
    started = time.time()
    outcome = runners.run_local(pipeline, printer=lambda line: print(line, file=sys.stderr, flush=True))
    total_s = time.time() - started
    seconds = component_seconds(root)
    print(json.dumps({
        "benchmark": "pipeline",
        "impressions": args.impressions,
        "model": args.model, "hparams": SMALL_HPARAMS, "train_steps": args.train_steps,
        "beam_pipeline_args": beam_args(args.beam_arg),
        "data_generation_s": round(generate_s, 1),
        "pipeline_wall_s": round(total_s, 1),
        "component_wall_s": seconds,
        "transform_rows_per_s": round(args.impressions / seconds["Transform"], 1),
        "blessed": outcome.blessed, "pushed": outcome.pushed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "pipeline_name": configs.PIPELINE_NAME,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
