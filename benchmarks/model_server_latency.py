"""The embedded model server's own cost: in-process ``serving_default`` vs the same model over gRPC.

Prints JSON: p50 / p99 latency (one client, sequential requests) of
- ``in_process``: the SavedModel's ``serving_default`` called in this process on a
  ``tf.constant`` of serialized tf.Examples (what TF Serving's session run costs, without RPC);
- ``server_predict``: the same examples through ``crocodile model-server`` (PredictionService.Predict,
  ``serving_default``, an [N] string tensor);
- ``server_regress``: the same rows as an ExampleListWithContext through Regress (``regress``
  signature), as the router and ``crocodile score`` send them;
- ``server_regress_message``: the same Regress call through the generated stub, which serializes the
  request message on every call (a RegressionRequest of 100 Examples costs the client ~0.3 ms of
  protobuf work here; the router forwards bytes and never pays it);
for 1 and 100 examples per request, and the server's overhead (server p50 - in-process p50, and
the ratio) per round. Requests are built and serialized once, outside the timed region, as the
in-process tensor is (``server_regress_message`` excepted); the client parses every response.

Method (DESIGN section 9): the server runs as a separate ``crocodile model-server`` process (batching
off, TF Serving's defaults otherwise); the variants are interleaved within each round (order
reversed every other round), after a warm-up round, over >= 5 rounds; numbers are medians over
rounds, and overheads are medians (min, max) of the per-round paired differences.

  .venv/bin/python benchmarks/model_server_latency.py [--export-dir DIR] [--rounds 5] [--baseline-source DIR]

--export-dir: a serving SavedModel (e.g. a Pusher's <serving_dir>/crocodile/<version>); by default a
small Crocodile model is trained for a few steps on a generated world and exported with
crocodile.serving.export, as tests/serving/test_export.py does.
--baseline-source: a checkout of older code (``git worktree add /tmp/base <commit>``); its model server
runs beside the current one and its Predict/Regress are interleaved with the others
(``baseline_predict``, ``baseline_regress``), with paired current-minus-baseline differences.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import crocodile  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from crocodile.benchmarks.local_processes import (checkout_commit, crocodile_command, launch, median_min_max,
                                                  progress, stop)

COUNTS = (1, 100)
VARIANTS = ("in_process", "server_predict", "server_regress", "server_regress_message")
BASELINE_VARIANTS = ("baseline_predict", "baseline_regress", "baseline_regress_message")
SERVICE = "tensorflow.serving.PredictionService"
SMALL_HPARAMS = {"embedding_dim": 8, "num_embedding_sets": 3, "expert_units": [32, 16], "tower_units": [16],
                 "prior_embedding_dim": 8, "batch_size": 256, "epochs": 1}


log = progress("model_server_latency")


def build_small_export(work: str):
    """(export_dir, raw rows of the eval split): a few training steps, then the serving export.

    Reused when ``work`` already holds one (``--work-dir``), so repeated runs measure the same model.
    """
    export_dir = os.path.join(work, "models", "crocodile", "1")
    rows_path = os.path.join(work, "rows.json")
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")) and os.path.isfile(rows_path):
        with open(rows_path) as f:
            return export_dir, json.load(f)
    from crocodile.model import registry, training
    from crocodile.model.features import FeatureConfig
    from crocodile.pipeline import transform_local
    from crocodile.pipeline.preprocessing import vocab_sizes
    from crocodile.serving.export import export_serving_model

    data_dir = os.path.join(work, "data")
    subprocess.run([sys.executable, "-m", "crocodile", "data", "generate", "--out", data_dir, "--impressions",
                    "4000", "--users", "200", "--items", "80", "--quiet"], check=True, capture_output=True)
    config = FeatureConfig.load(os.path.join(data_dir, "feature_config.json"))
    result = transform_local.analyze_and_transform(data_dir, os.path.join(work, "tft"), config)
    model = registry.build_model("crocodile", config, vocab_sizes(result.tft_output, config), SMALL_HPARAMS)
    training.fit(model, transform_local.make_dataset(result.train, 256), None, SMALL_HPARAMS, epochs=1,
                 steps_per_epoch=5, verbose=0)
    export_serving_model(model.network, result.tft_output, config, export_dir)
    columns = list(config.raw_feature_columns)
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k in columns}
            for row in result.eval_raw.iloc[:100].to_dict("records")]
    with open(rows_path, "w") as f:
        json.dump(rows, f)
    return export_dir, rows


def rows_from_warmup(export_dir: str):
    """Raw rows for a given export: the features of its warmup requests (written by the exporter)."""
    from crocodile.serving import warmup
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    rows = []
    for data in tf.data.TFRecordDataset(warmup.warmup_path(export_dir)).as_numpy_iterator():
        record = prediction_log_pb2.PredictionLog.FromString(data)
        if record.WhichOneof("log_type") != "predict_log":   # the Regress records carry the same rows
            continue
        for serialized in tf.make_ndarray(record.predict_log.request.inputs["examples"]):
            example = tf.train.Example.FromString(serialized)
            row = {}
            for key, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                value = getattr(feature, kind).value[0]
                row[key] = value.decode() if isinstance(value, bytes) else value
            rows.append(row)
    return rows


def launch_server(config_path: str, log_path: str, extra_args=(), source=None):
    return launch(crocodile_command(["model-server", "--port", "0", "--model_config_file", config_path,
                                     *extra_args], source), log_path)


def timed(call, requests: int):
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def build_calls(rows, channels, serving_default):
    """{(variant, n): call} for every variant and example count, and each server's largest score
    difference from in-process (checked: within rtol 1e-5; Regress against the merged rows)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

    from crocodile.model.features import DOMAIN_KEY, USER_KEY
    from crocodile.serving import examples as example_builders
    from crocodile.serving.tensor_protos import to_tensor_proto
    calls, score_differences = {}, {}
    for n in COUNTS:
        batch = rows[:n]
        serialized = [example_builders.make_example(row).SerializeToString() for row in batch]
        tensor = tf.constant(serialized)
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = "crocodile"
        predict.inputs["examples"].CopyFrom(to_tensor_proto(np.array(serialized, dtype=object)))
        context = {k: batch[0][k] for k in (USER_KEY, DOMAIN_KEY) if k in batch[0]}
        candidates = [{k: v for k, v in row.items() if k not in context} for row in batch]
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "crocodile"
        regress.model_spec.signature_name = "regress"
        regress.input.CopyFrom(example_builders.example_list_with_context(context, candidates))
        calls[("in_process", n)] = lambda t=tensor: serving_default(examples=t)["outputs"].numpy()
        # Regress scores context features (the first row's user and domain) + each candidate's.
        merged = tf.constant([example_builders.make_example(example_builders.merged_features(context, c))
                              .SerializeToString() for c in candidates])
        expected = {"predict": calls[("in_process", n)](),
                    "regress": serving_default(examples=merged)["outputs"].numpy()}
        for name, channel in channels.items():
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            # Request bytes in (serialized once, above), the response parsed as any client would.
            predict_bytes = channel.unary_unary(f"/{SERVICE}/Predict",
                                                response_deserializer=predict_pb2.PredictResponse.FromString)
            regress_bytes = channel.unary_unary(f"/{SERVICE}/Regress",
                                                response_deserializer=regression_pb2.RegressionResponse.FromString)
            calls[(f"{name}_predict", n)] = lambda b=predict.SerializeToString(), c=predict_bytes: c(b, timeout=30)
            calls[(f"{name}_regress", n)] = lambda b=regress.SerializeToString(), c=regress_bytes: c(b, timeout=30)
            calls[(f"{name}_regress_message", n)] = lambda r=regress, s=stub: s.Regress(r, timeout=30)
            for api in ("predict", "regress", "regress_message"):
                response = calls[(f"{name}_{api}", n)]()
                got = (tf.make_ndarray(response.outputs["outputs"]) if api == "predict"
                       else np.array([r.value for r in response.result.regressions], dtype=np.float32))
                wanted = expected["predict" if api == "predict" else "regress"]
                np.testing.assert_allclose(got, wanted, rtol=1e-5, err_msg=f"{name} {api}")
                score_differences[f"{name}_{api}_{n}_examples"] = float(np.abs(got - wanted).max())
    return calls, score_differences


def measure(calls, variant_names, rounds: int, requests: int):
    """{(variant, n): {"p50_ms": [...], "p99_ms": [...]}}: one number per round, variants interleaved."""
    variants = [(v, n) for n in COUNTS for v in variant_names]
    samples = {key: {"p50_ms": [], "p99_ms": []} for key in variants}
    for round_index in range(rounds + 1):  # round 0 warms up, discarded
        order = variants if round_index % 2 == 0 else variants[::-1]
        for key in order:
            p50, p99 = timed(calls[key], requests if round_index else 30)
            if round_index:
                samples[key]["p50_ms"].append(p50)
                samples[key]["p99_ms"].append(p99)
        log(f"round {round_index}/{rounds} done" + (" (warm-up)" if round_index == 0 else ""))
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export-dir", help="serving SavedModel (default: a small Crocodile export)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per sample")
    parser.add_argument("--work-dir", help="keep the small export here and reuse it on the next run")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra model-server flag, e.g. --server-arg=--tensorflow_session_parallelism=2")
    parser.add_argument("--baseline-source", help="checkout of older code whose model server is measured alongside")
    args = parser.parse_args()
    load_at_start = os.getloadavg()

    import grpc
    import tensorflow as tf

    from crocodile.serving.model_config import build_model_config, format_model_config, write_atomic

    work = args.work_dir or tempfile.mkdtemp(prefix="model_server_latency_")
    os.makedirs(work, exist_ok=True)
    if args.export_dir:
        export_dir = os.path.abspath(args.export_dir)
        rows = rows_from_warmup(export_dir)
        if not rows:
            raise SystemExit(f"{export_dir}: no warmup requests to take example rows from")
        rows = (rows * (100 // len(rows) + 1))[:100]
        model_name = "given --export-dir"
    else:
        log("training and exporting a small Crocodile model")
        export_dir, rows = build_small_export(work)
        model_name = f"crocodile, {SMALL_HPARAMS}, 5 training steps"
    base = os.path.join(tempfile.mkdtemp(prefix="serve_", dir=work), "crocodile")
    os.makedirs(base)
    os.symlink(export_dir, os.path.join(base, "1"))
    config_path = os.path.join(work, "model_config.pbtxt")
    write_atomic(config_path, format_model_config(build_model_config("crocodile", base, [1])))

    model = tf.saved_model.load(export_dir)
    serving_default = model.signatures["serving_default"]
    log("starting crocodile model-server" + (" and the baseline's" if args.baseline_source else ""))
    variant_names = VARIANTS + (BASELINE_VARIANTS if args.baseline_source else ())
    servers, channels = {}, {}
    try:
        servers["server"] = launch_server(config_path, os.path.join(work, "server.log"), args.server_arg)
        if args.baseline_source:
            servers["baseline"] = launch_server(config_path, os.path.join(work, "baseline_server.log"),
                                                args.server_arg, source=args.baseline_source)
        channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, (_, port) in servers.items()}
        calls, score_differences = build_calls(rows, channels, serving_default)
        samples = measure(calls, variant_names, args.rounds, args.requests)
    finally:
        for channel in channels.values():
            channel.close()
        stop([process for process, _ in servers.values()])

    results, overhead, against_baseline = {}, {}, {}
    for n in COUNTS:
        results[f"{n}_examples"] = {
            variant: {metric: round(float(np.median(values)), 3) for metric, values in samples[(variant, n)].items()}
            for variant in variant_names}
        base_p50 = np.array(samples[("in_process", n)]["p50_ms"])
        entry = {}
        for variant in variant_names[1:]:
            p50 = np.array(samples[(variant, n)]["p50_ms"])
            diffs = p50 - base_p50
            entry[variant] = {"p50_minus_in_process_ms": median_min_max(diffs),
                              "p50_ratio_over_in_process": median_min_max(p50 / base_p50),
                              "goal_p50_within_1ms": bool(np.median(diffs) <= 1.0)}
        overhead[f"{n}_examples"] = entry
        if args.baseline_source:
            against_baseline[f"{n}_examples"] = {
                api: {"p50_current_minus_baseline_ms": median_min_max(
                          np.array(samples[(f"server_{api}", n)]["p50_ms"])
                          - np.array(samples[(f"baseline_{api}", n)]["p50_ms"])),
                      "p50_ratio_current_over_baseline": median_min_max(
                          np.array(samples[(f"server_{api}", n)]["p50_ms"])
                          / np.array(samples[(f"baseline_{api}", n)]["p50_ms"]))}
                for api in ("predict", "regress", "regress_message")}
    report = {
        "benchmark": "model_server_latency",
        "model": model_name,
        "setup": {"rounds": args.rounds, "warmup_rounds": 1, "requests_per_sample": args.requests,
                  "server": "crocodile model-server, separate process, TF Serving default flags (batching off, warmup on), "
                            "op threads: the stand-in default (1 intra, 1 inter; serving/cli.py), CPU",
                  "client": "one sequential gRPC client in this process (requests prebuilt and serialized once, "
                            "except *_regress_message: the stub serializes the message per call)",
                  "cpu_count": os.cpu_count(), "load_average_at_start": load_at_start,
                  "load_average_at_end": os.getloadavg(),
                  "machine": "cores shared with other work; absolute numbers are noisy, paired differences less so"},
        "server_args": args.server_arg,
        "max_abs_score_difference_vs_in_process": score_differences,
        "results": results,
        "server_overhead": overhead,
    }
    if args.baseline_source:
        report["baseline"] = {"source": os.path.abspath(args.baseline_source), "commit": checkout_commit(args.baseline_source),
                              "current_commit": checkout_commit(os.path.dirname(os.path.abspath(__file__))),
                              "current_vs_baseline": against_baseline}
    print(json.dumps(report, indent=2))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
