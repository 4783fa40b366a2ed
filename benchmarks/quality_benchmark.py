"""Offline quality benchmark: every model on the same split of world logs, several seeds.

Steps: TFT transform of the logs (crocodile.pipeline.transform_local, the pipeline's own
preprocessing_fn); the training rows are split again into fit / validation (early
stopping); the held-out eval rows are scored by every model and by a ladder of reference
scorers on the same rows (random, item popularity, the logging policy, and the ceiling:
the world's position-free relevance p_relevance, since no model sees position; the
p_click oracle is shown beside it). Seeds change initialisation and shuffling, not the
split, so differences are paired over seeds and over the same eval rows
(benchmarks/paired_analysis.py). Models run interleaved (seed 0: a b c, seed 1: a b c,
...), so machine-load drift hits all of them alike.

Every model gets the same tuning budget: none. All run at their registered defaults
(model/hparams.py) with the same epoch cap, ended by early stopping on validation AUC;
the report counts the runs that hit the cap. Budgets (``BUDGETS``) fix models, seeds,
rows and the epoch cap before any result is seen.
"""
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
REFERENCE_MODEL = "crocodile"
# Capacity-matched controls: MMoE with one embedding as wide as Crocodile's M sets
# together (M * e). ME-MMoE already has M sets of e, the same total as Crocodile.
CAPACITY_MATCHED = {"mmoe_wide": "mmoe"}
SEEDS_HEADLINE = 5
BUDGETS = {
    # <= 30 min on 2 cores: Crocodile against its closest baseline and the per-domain floor.
    "small": {"models": ("crocodile", "mmoe", "single_domain"), "seeds": SEEDS_HEADLINE,
              "max_rows": 300_000, "epochs": 4},
    # Every registered model plus the capacity-matched control, all rows.
    "full": {"models": None, "seeds": SEEDS_HEADLINE, "max_rows": None, "epochs": 10},
}
VALIDATION_FRACTION = 0.1
EVAL_FRACTION = 0.2
DIAGNOSTIC_ROWS = 8192
PREDICT_BATCH = 16384


def all_models() -> tuple:
    from crocodile.model.registry import MODEL_NAMES
    return tuple(MODEL_NAMES) + tuple(CAPACITY_MATCHED)


def model_spec(name: str, hparams: dict) -> tuple:
    """(registry name, hparams) of a benchmark entry; capacity-matched entries widen e."""
    from crocodile.model.hparams import resolve
    if name not in CAPACITY_MATCHED:
        return name, hparams
    base = CAPACITY_MATCHED[name]
    defaults = resolve(REFERENCE_MODEL, hparams)
    return base, {**hparams, "embedding_dim": defaults.num_embedding_sets * defaults.embedding_dim}


def load_truth(data_dir: str, eval_raw: pd.DataFrame) -> Optional[pd.DataFrame]:
    """p_click and p_relevance of each eval row, joined on (request_id, position); None if absent."""
    from crocodile.simulation import dataset
    if (not os.path.isdir(os.path.join(data_dir, dataset.GROUND_TRUTH_DIR))
            or "request_id" not in eval_raw or "position" not in eval_raw):
        return None
    columns = ["request_id", "position", "p_click", "p_relevance"]
    truth = pd.DataFrame(dataset.read_ground_truth(data_dir, columns)).astype({"request_id": str,
                                                                               "position": np.int64})
    keys = eval_raw[["request_id", "position"]].astype({"request_id": str, "position": np.int64})
    joined = keys.merge(truth, on=["request_id", "position"], how="left")
    if joined["p_click"].isna().any():
        raise UserError(f"{data_dir}/ground_truth: {int(joined['p_click'].isna().sum())} eval rows have no p_click")
    return joined


def ladder_scores(train_raw: pd.DataFrame, eval_raw: pd.DataFrame, truth: Optional[pd.DataFrame]) -> Dict[str, np.ndarray]:
    """Reference scorers on the eval rows, weakest first (the "ladder").

    random: uniform noise; popularity: the item's clicks in the training split; logging
    policy: minus the position it gave the item (its own ranking); ceiling: the true
    position-free relevance; p_click oracle: the true click probability, position included
    (above the ceiling because no model sees position).
    """
    rng = np.random.default_rng(0)
    clicks = train_raw.groupby("item_id")["click"].sum()
    ladder = {"random": rng.random(len(eval_raw)),
              "popularity": eval_raw["item_id"].map(clicks).fillna(0).to_numpy(np.float64)}
    if "position" in eval_raw:
        ladder["logging policy"] = -eval_raw["position"].to_numpy(np.float64)
    if truth is not None:
        ladder["ceiling (p_relevance)"] = truth["p_relevance"].to_numpy(np.float64)
        ladder["p_click oracle (sees position)"] = truth["p_click"].to_numpy(np.float64)
    return ladder


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


def train_one(name: str, seed: int, data, feature_config, vocab_sizes, hparams: dict, epochs: int,
              scored: str = "eval", diagnostic_rows: Optional[int] = DIAGNOSTIC_ROWS) -> dict:
    """Trains one model with one seed; returns its metrics, diagnostics, timings and (under
    "eval_probabilities", not written to JSON) its predictions on the scored rows.

    data = (fit, validation, eval) arrays; early stopping reads validation. `scored` picks
    the rows scored and diagnosed: "eval" (the held-out rows) or "validation" (for choosing
    settings without touching eval). `diagnostic_rows`: rows for the expert statistics
    (None: every scored row, so the cross-expert covariance is the full-set value).
    """
    import tensorflow as tf

    from crocodile.model import diagnostics
    from crocodile.model.registry import build_model
    from crocodile.model.training import fit
    from crocodile.pipeline.transform_local import make_dataset

    fit_arrays, val_arrays, eval_arrays = data
    if scored not in ("eval", "validation"):
        raise ValueError(f"scored must be 'eval' or 'validation', got {scored!r}")
    scored_arrays = eval_arrays if scored == "eval" else val_arrays
    tf.keras.utils.set_random_seed(seed)
    network_name, hparams = model_spec(name, hparams)
    model = build_model(network_name, feature_config, vocab_sizes, {**hparams, "seed": seed})
    if model.training_data_columns:            # EDDA: alignment pairs from the fit rows only
        model.prepare_training_data(fit_arrays)
    batch = model.hparams.batch_size
    start = time.perf_counter()
    history = fit(model, make_dataset(fit_arrays, batch, shuffle=True, seed=seed),
                  make_dataset(val_arrays, PREDICT_BATCH, shuffle=False), epochs=epochs, verbose=0)
    train_seconds = time.perf_counter() - start
    probabilities = predict(model.network, scored_arrays)
    metrics = score(scored_arrays["click"], probabilities, scored_arrays["user_id"], scored_arrays["domain_id_xf"])
    features = {k: v[:diagnostic_rows] for k, v in scored_arrays.items() if k.endswith("_xf")}
    batches = [{k: v[i:i + PREDICT_BATCH] for k, v in features.items()}
               for i in range(0, len(features["domain_id_xf"]), PREDICT_BATCH)]
    epochs_run = len(history.history["loss"])
    return {
        "model": name, "seed": seed, "scored": scored, "train_seconds": train_seconds,
        "epochs_run": epochs_run, "epoch_cap": epochs, "hit_epoch_cap": epochs_run >= epochs,
        "eval_probabilities": probabilities,
        "val_auc_by_epoch": [float(x) for x in history.history.get("val_auc", [])],
        "train_disentangle_loss_by_epoch": [float(x) for x in history.history.get("disentangle_loss", [])],
        "parameters": int(sum(np.prod(v.shape) for v in model.network.trainable_variables)),
        "metrics": metrics,
        "diagnostics": {
            "information_abundance": diagnostics.embedding_diagnostics(model.network, fit_arrays),
            "experts": diagnostics.network_expert_statistics(model.network, batches),
        },
    }


def prepare_data(data_dir: str, out_dir: str, max_rows: Optional[int] = None):
    """Transforms the logs (the pipeline's preprocessing_fn) and splits them.

    Returns (feature_config, vocab_sizes, (fit, validation, eval) arrays, transformed,
    transform_seconds). The split is fixed (it does not depend on model seeds).
    """
    from crocodile.model.features import FeatureConfig
    from crocodile.pipeline.preprocessing import vocab_sizes as tft_vocab_sizes
    from crocodile.pipeline.transform_local import analyze_and_transform

    config_path = os.path.join(data_dir, "feature_config.json")
    if not os.path.exists(config_path):
        raise UserError(f"{config_path}: missing (write data with `crocodile data generate`)")
    feature_config = FeatureConfig.load(config_path)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    log.info("transforming %s%s", data_dir, f" (first {max_rows:,} rows)" if max_rows else "")
    transformed = analyze_and_transform(data_dir, os.path.join(out_dir, "transform"), feature_config,
                                        eval_fraction=EVAL_FRACTION, max_rows=max_rows)
    transform_seconds = time.perf_counter() - start
    log.info("transform done in %.0fs", transform_seconds)
    vocab = tft_vocab_sizes(transformed.tft_output, feature_config)
    fit_arrays, val_arrays = split_validation(transformed.train, VALIDATION_FRACTION)
    return feature_config, vocab, (fit_arrays, val_arrays, transformed.eval), transformed, transform_seconds


RUN_SETTINGS = "run_settings.json"
PARTS = "parts.jsonl"   # one record per invocation: its transform time and the eval rows' hash


def run_settings(data_dir, models, seeds, max_rows, epochs, hparams, reference, budget) -> dict:
    """What a resumed run must share with the one it continues (written at the start)."""
    return {"data": os.path.abspath(data_dir), "models": list(models), "seeds": seeds, "max_rows": max_rows,
            "epoch_cap": epochs, "hparams_overrides": hparams, "reference": reference, "budget": budget}


def eval_fingerprint(labels, users, domains) -> str:
    """Hash of the eval rows, so a resumed run is paired on exactly the rows of the first part."""
    import hashlib
    digest = hashlib.sha256()
    for array in (labels, users, domains):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def start_or_resume(out_dir: str, settings: dict, resume: bool):
    """Checks out_dir; returns (the runs already completed there, the earlier parts' records),
    both empty for a new run.

    A new run needs a folder without a report. A resumed run needs the settings it was started
    with, unchanged; it keeps every run recorded in runs.jsonl whose predictions were saved
    (a run cut off mid-way is trained again) and never rewrites them.
    """
    from crocodile.benchmarks.benchmark_report import read_jsonl

    settings_path = os.path.join(out_dir, RUN_SETTINGS)
    if not resume:
        if os.path.exists(os.path.join(out_dir, "quality.json")) or os.path.exists(settings_path):
            raise UserError(f"{out_dir}: holds an earlier benchmark run; choose a new --out "
                            "(or pass --resume to continue it)")
        os.makedirs(out_dir, exist_ok=True)
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=1)
        return [], []
    if not os.path.exists(settings_path):
        raise UserError(f"--resume: {settings_path} not found; {out_dir} holds no run to continue")
    with open(settings_path) as f:
        recorded = json.load(f)
    changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    if changed:
        detail = "; ".join(f"{k}: was {recorded.get(k)!r}, now {settings.get(k)!r}" for k in changed)
        raise UserError(f"--resume: settings differ from the run in {out_dir} ({detail})")
    done = [r for r in read_jsonl(os.path.join(out_dir, "runs.jsonl"))
            if os.path.exists(prediction_path(out_dir, r["model"], r["seed"]))]
    return done, read_jsonl(os.path.join(out_dir, PARTS))


def prediction_path(out_dir: str, model: str, seed: int) -> str:
    return os.path.join(out_dir, "predictions", f"{model}-seed{seed}.npy")


def run(data_dir: str, models: Sequence[str], seeds: int, out_dir: str, max_rows: Optional[int] = None,
        epochs: Optional[int] = None, hparams: Optional[dict] = None, reference: str = REFERENCE_MODEL,
        budget: Optional[str] = None, resume: bool = False) -> dict:
    """Runs the benchmark and writes quality.json, quality.md and PNG plots under out_dir.

    resume: continue a run cut short in out_dir (same settings), training only what is missing;
    the report's total_seconds then adds up the parts' wall times.
    """
    from crocodile.benchmarks.benchmark_report import summarise, write_report
    from crocodile.benchmarks.paired_analysis import paired_summary
    from crocodile.model.hparams import HParams

    unknown = [m for m in models if m not in all_models()]
    if unknown:
        raise UserError(f"--models: unknown model(s) {unknown}; choose from {', '.join(all_models())}")
    if reference not in models:
        raise UserError(f"--reference {reference!r} is not among --models")
    if seeds < 1:
        raise UserError("--seeds must be >= 1")
    hparams = dict(hparams or {})
    epochs = epochs or HParams().epochs
    settings = run_settings(data_dir, models, seeds, max_rows, epochs, hparams, reference, budget)
    done, earlier_parts = start_or_resume(out_dir, settings, resume)
    completed = {(r["model"], r["seed"]): r for r in done}
    # Wall time of the earlier parts: their transforms and the runs they completed.
    earlier_seconds = (sum(p["transform_seconds"] for p in earlier_parts)
                       + sum(r.get("wall_seconds", r["train_seconds"]) for r in completed.values()))
    if resume:
        log.info("resuming %s: %d of %d runs already done", out_dir, len(completed), seeds * len(models))

    start = time.perf_counter()
    feature_config, vocab, data, transformed, transform_seconds = prepare_data(data_dir, out_dir, max_rows)
    fit_arrays, val_arrays, eval_arrays = data
    import tensorflow as tf  # after the transform: TFT has imported it already
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]  # Keras trains on the first one when present
    labels, users, domains = eval_arrays["click"], eval_arrays["user_id"], eval_arrays["domain_id_xf"]

    truth = load_truth(data_dir, transformed.eval_raw)
    ladder = {name: score(labels, values, users, domains)
              for name, values in ladder_scores(transformed.train_raw, transformed.eval_raw, truth).items()}

    report = {
        "data": {"dir": os.path.abspath(data_dir), "rows_fit": len(fit_arrays["click"]),
                 "rows_validation": len(val_arrays["click"]), "rows_eval": len(labels),
                 "eval_rows_by_domain": {str(d): int(c) for d, c in zip(*np.unique(domains, return_counts=True))},
                 "eval_clicks_by_domain": {str(d): int(labels[domains == d].sum()) for d in np.unique(domains)},
                 "eval_ctr": float(np.mean(labels))},
        "settings": {"budget": budget, "models": list(models), "reference": reference, "seeds": seeds,
                     "epoch_cap": epochs, "hparams_overrides": hparams, "tuning": "none: every model at its defaults",
                     "hparams_defaults": HParams().to_dict(), "max_rows": max_rows,
                     "devices": gpus or ["CPU only"]},
        "transform_seconds": transform_seconds,
        "eval_fingerprint": eval_fingerprint(labels, users, domains),
        "ladder": ladder,
        "runs": [],
    }
    if earlier_parts and earlier_parts[0]["eval_fingerprint"] != report["eval_fingerprint"]:
        raise UserError(f"--resume: the eval rows differ from those of the run in {out_dir} "
                        "(data changed since it started)")
    with open(os.path.join(out_dir, PARTS), "a") as f:
        f.write(json.dumps({"transform_seconds": transform_seconds, "eval_fingerprint": report["eval_fingerprint"],
                            "resumed_with_runs": len(completed)}) + "\n")
    predictions: Dict[str, list] = {m: [] for m in models}
    os.makedirs(os.path.join(out_dir, "predictions"), exist_ok=True)
    total = seeds * len(models)
    trained = 0
    for seed in range(seeds):
        for name in models:
            done = len(report["runs"])
            if (name, seed) in completed:
                report["runs"].append(completed[(name, seed)])
                predictions[name].append(np.load(prediction_path(out_dir, name, seed)))
                continue
            elapsed = time.perf_counter() - start
            eta = "" if not trained else \
                f", ETA {(elapsed - transform_seconds) / trained * (total - done) / 60:.0f} min"
            log.info("run %d/%d (seed %d, %s)%s", done + 1, total, seed, name, eta)
            run_start = time.perf_counter()
            result = train_one(name, seed, data, feature_config, vocab, hparams, epochs)
            result["wall_seconds"] = time.perf_counter() - run_start
            trained += 1
            probabilities = result.pop("eval_probabilities")
            predictions[name].append(probabilities)
            np.save(prediction_path(out_dir, name, seed), probabilities.astype(np.float32))
            log.info("  %s seed %d: AUC %.4f gAUC %.4f, %d epochs%s in %.0fs", name, seed,
                     result["metrics"]["overall"]["auc"], result["metrics"]["overall"]["gauc"],
                     result["epochs_run"], " (hit the cap)" if result["hit_epoch_cap"] else "",
                     result["train_seconds"])
            report["runs"].append(result)
            with open(os.path.join(out_dir, "runs.jsonl"), "a") as f:
                f.write(json.dumps(result) + "\n")
        # A complete report after every round of seeds, so a cut-short run still has one.
        report["seeds_completed"] = seed + 1
        report["summary"] = summarise(report["runs"], models, ladder)
        report["paired"] = paired_summary(predictions, reference, labels, users, domains)
        report["total_seconds"] = earlier_seconds + time.perf_counter() - start
        report["parts"] = len(earlier_parts) + 1
        write_report(report, out_dir)
    return report
