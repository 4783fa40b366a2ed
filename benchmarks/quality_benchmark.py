"""Offline quality benchmark: every model on the same split of world logs, several seeds.

Steps: TFT transform of the logs (crocodile.pipeline.transform_local, the pipeline's own
preprocessing_fn); the training rows are split again into fit / validation (early
stopping); the held-out eval rows are scored by every model and by the oracle (the
world's true click probability from DIR/ground_truth). Seeds change initialisation and
shuffling, not the split, so differences are paired over seeds. Models run interleaved
(seed 0: a b c, seed 1: a b c, ...), so machine-load drift hits all of them alike.
"""
import glob
import json
import logging
import os
import time
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd

from crocodile.errors import UserError

log = logging.getLogger("crocodile.benchmark.quality")

DEFAULT_MODELS = ("crocodile", "mmoe", "me_mmoe", "shared_bottom", "star")
VALIDATION_FRACTION = 0.1
EVAL_FRACTION = 0.2
DIAGNOSTIC_ROWS = 8192
PREDICT_BATCH = 16384


def load_oracle(data_dir: str, eval_raw: pd.DataFrame) -> Optional[np.ndarray]:
    """True P(click) of each eval row, joined on (request_id, position); None if absent."""
    files = sorted(glob.glob(os.path.join(data_dir, "ground_truth", "*.csv")))
    if not files or "request_id" not in eval_raw or "position" not in eval_raw:
        return None
    truth = pd.concat([pd.read_csv(f, dtype={"request_id": str}) for f in files], ignore_index=True)
    keys = eval_raw[["request_id", "position"]].astype({"request_id": str, "position": np.int64})
    joined = keys.merge(truth[["request_id", "position", "p_click"]], on=["request_id", "position"], how="left")
    if joined["p_click"].isna().any():
        raise UserError(f"{data_dir}/ground_truth: {int(joined['p_click'].isna().sum())} eval rows have no p_click")
    return joined["p_click"].to_numpy()


def split_validation(arrays: Dict[str, np.ndarray], fraction: float, seed: int = 1):
    n = len(arrays["click"])
    is_val = np.random.default_rng(seed).random(n) < fraction
    return ({k: v[~is_val] for k, v in arrays.items()}, {k: v[is_val] for k, v in arrays.items()})


def predict(network, arrays: Dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf
    features = {k: v for k, v in arrays.items() if k.endswith("_xf")}
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(PREDICT_BATCH)
    predict_fn = tf.function(lambda f: network(f, training=False)["probability"])
    return np.concatenate([predict_fn(batch).numpy() for batch in dataset])


def score(labels, scores, users, domains) -> dict:
    from crocodile.model.metrics import per_domain_metrics
    result = per_domain_metrics(labels, scores, users, domains)
    return {"overall": result["overall"], "domains": {str(k): v for k, v in result["domains"].items()}}


def train_one(name: str, seed: int, data, feature_config, vocab_sizes, hparams: dict, epochs: int) -> dict:
    """Trains one model with one seed; returns its eval metrics, diagnostics and timings."""
    import tensorflow as tf

    from crocodile.model import diagnostics
    from crocodile.model.registry import build_model
    from crocodile.model.training import fit
    from crocodile.pipeline.transform_local import make_dataset

    fit_arrays, val_arrays, eval_arrays = data
    tf.keras.utils.set_random_seed(seed)
    model = build_model(name, feature_config, vocab_sizes, {**hparams, "seed": seed})
    if model.training_data_columns:            # EDDA: alignment pairs from the fit rows only
        model.prepare_training_data(fit_arrays)
    batch = model.hparams.batch_size
    start = time.perf_counter()
    history = fit(model, make_dataset(fit_arrays, batch, shuffle=True, seed=seed),
                  make_dataset(val_arrays, PREDICT_BATCH, shuffle=False), epochs=epochs, verbose=0)
    train_seconds = time.perf_counter() - start
    probabilities = predict(model.network, eval_arrays)
    metrics = score(eval_arrays["click"], probabilities, eval_arrays["user_id"], eval_arrays["domain_id_xf"])
    sample = {k: v[:DIAGNOSTIC_ROWS] for k, v in eval_arrays.items() if k.endswith("_xf")}
    return {
        "model": name, "seed": seed, "train_seconds": train_seconds,
        "epochs_run": len(history.history["loss"]),
        "val_auc_by_epoch": [float(x) for x in history.history.get("val_auc", [])],
        "parameters": int(sum(np.prod(v.shape) for v in model.network.trainable_variables)),
        "metrics": metrics,
        "diagnostics": {
            "information_abundance": diagnostics.embedding_diagnostics(model.network, fit_arrays),
            "experts": diagnostics.network_expert_statistics(model.network, [sample]),
        },
    }


def run(data_dir: str, models: Sequence[str], seeds: int, out_dir: str, max_rows: Optional[int] = None,
        epochs: Optional[int] = None, hparams: Optional[dict] = None) -> dict:
    """Runs the benchmark and writes quality.json, quality.md and PNG plots under out_dir."""
    from crocodile.benchmarks.benchmark_report import summarise, write_report
    from crocodile.model.features import FeatureConfig
    from crocodile.model.hparams import HParams
    from crocodile.model.registry import MODEL_NAMES
    from crocodile.pipeline.preprocessing import vocab_sizes as tft_vocab_sizes
    from crocodile.pipeline.transform_local import analyze_and_transform

    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise UserError(f"--models: unknown model(s) {unknown}; choose from {', '.join(MODEL_NAMES)}")
    if seeds < 1:
        raise UserError("--seeds must be >= 1")
    config_path = os.path.join(data_dir, "feature_config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{config_path}: missing (write data with `crocodile data generate`)")
    feature_config = FeatureConfig.load(config_path)
    os.makedirs(out_dir, exist_ok=True)
    hparams = dict(hparams or {})
    epochs = epochs or HParams().epochs

    start = time.perf_counter()
    log.info("transforming %s", data_dir)
    transformed = analyze_and_transform(data_dir, os.path.join(out_dir, "transform"), feature_config,
                                        eval_fraction=EVAL_FRACTION, max_rows=max_rows)
    transform_seconds = time.perf_counter() - start
    vocab = tft_vocab_sizes(transformed.tft_output, feature_config)
    fit_arrays, val_arrays = split_validation(transformed.train, VALIDATION_FRACTION)
    eval_arrays = transformed.eval
    data = (fit_arrays, val_arrays, eval_arrays)

    oracle_scores = load_oracle(data_dir, transformed.eval_raw)
    oracle = None if oracle_scores is None else score(
        eval_arrays["click"], oracle_scores, eval_arrays["user_id"], eval_arrays["domain_id_xf"])

    report = {
        "data": {"dir": os.path.abspath(data_dir), "rows_fit": len(fit_arrays["click"]),
                 "rows_validation": len(val_arrays["click"]), "rows_eval": len(eval_arrays["click"]),
                 "eval_rows_by_domain": {str(d): int(c) for d, c in zip(*np.unique(eval_arrays["domain_id_xf"], return_counts=True))},
                 "eval_ctr": float(np.mean(eval_arrays["click"]))},
        "settings": {"models": list(models), "seeds": seeds, "epochs": epochs, "hparams_overrides": hparams,
                     "hparams_defaults": HParams().to_dict(), "max_rows": max_rows},
        "transform_seconds": transform_seconds,
        "oracle": oracle,
        "runs": [],
    }
    for seed in range(seeds):
        for name in models:
            log.info("seed %d/%d: training %s", seed + 1, seeds, name)
            result = train_one(name, seed, data, feature_config, vocab, hparams, epochs)
            log.info("  %s seed %d: AUC %.4f gAUC %.4f in %.0fs", name, seed,
                     result["metrics"]["overall"]["auc"], result["metrics"]["overall"]["gauc"],
                     result["train_seconds"])
            report["runs"].append(result)
            with open(os.path.join(out_dir, "runs.jsonl"), "a") as f:
                f.write(json.dumps(result) + "\n")
        # A complete report after every round of seeds, so a cut-short run still has one.
        report["seeds_completed"] = seed + 1
        report["summary"] = summarise(report["runs"], models, oracle)
        report["total_seconds"] = time.perf_counter() - start
        write_report(report, out_dir)
    return report
