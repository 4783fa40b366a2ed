"""Training-speed benchmark: crocodile with the covariance loss, without it, and MMoE.

Same synthetic transformed batches (world-sized vocabularies), same batch size. After a
warm-up, the variants are timed interleaved (A B C A B C ...) for `repeats` rounds of
`steps` training steps; the report gives median examples/s per variant and the medians
(and ranges) of the per-round paired ratios, because these 2 shared cores drift by tens
of percent between back-to-back runs (DESIGN section 9).
"""
import os
import time
from typing import Dict

import numpy as np

VARIANTS = {
    "crocodile_cov": ("crocodile", {}),
    "crocodile_no_cov": ("crocodile", {"disentangle_loss": "none"}),
    "mmoe": ("mmoe", {}),
}
WORLD_VOCAB = {"user_id": 10001, "item_id": 2001, "user_segment": 9, "user_region": 9, "item_category": 21}


def synthetic_features(n: int, vocab: Dict[str, int], seed: int = 0):
    from crocodile.model.features import WORLD_FEATURES, transformed_name
    rng = np.random.default_rng(seed)
    features = {transformed_name(k): rng.integers(0, vocab[k], n).astype(np.int64) for k in WORLD_FEATURES.categorical}
    for key in WORLD_FEATURES.numeric:
        features[transformed_name(key)] = rng.normal(size=n).astype(np.float32)
    features[transformed_name("domain_id")] = rng.choice(
        WORLD_FEATURES.num_domains, n, p=[0.66, 0.21, 0.08, 0.035, 0.015]).astype(np.int64)
    labels = (rng.random(n) < 0.05).astype(np.int64)
    return features, labels


def run(batch_size: int = 4096, steps: int = 20, repeats: int = 5, warmup_steps: int = 5, hparams=None,
        variants=None) -> dict:
    """variants: {name: (model, overrides)}; default VARIANTS. With custom variants the
    ratios are every variant over the first one (e.g. a new default over the old one)."""
    import tensorflow as tf

    from crocodile.model.features import WORLD_FEATURES
    from crocodile.model.registry import build_model
    from crocodile.model.training import compile_model

    features, labels = synthetic_features(batch_size * 8, WORLD_VOCAB)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch_size, drop_remainder=True)
    dataset = dataset.cache().repeat().prefetch(2)
    custom = variants is not None
    variants = dict(variants or VARIANTS)
    trainers, sizes = {}, {}
    for variant, (name, overrides) in variants.items():
        tf.keras.utils.set_random_seed(0)
        model = build_model(name, WORLD_FEATURES, WORLD_VOCAB, {**(hparams or {}), **overrides})
        compile_model(model, model.hparams)
        train_function = model.make_train_function()
        iterator = iter(dataset)
        for _ in range(warmup_steps):
            train_function(iterator)
        trainers[variant] = (train_function, iterator)
        sizes[variant] = {
            "model": name, "disentangle_loss": model.hparams.disentangle_loss if name == "crocodile" else None,
            "disentangle_rows": model.hparams.disentangle_rows,
            "parameters": int(sum(np.prod(v.shape) for v in model.network.trainable_variables)),
            "expert_units": list(model.hparams.expert_units), "embedding_dim": model.hparams.embedding_dim,
            "num_experts": int(model.network(
                {k: v[:2] for k, v in features.items()})["expert_outputs"].shape[1])}
    rates = {v: [] for v in variants}
    cpu_rates = {v: [] for v in variants}      # examples per CPU-second of this process: less load-sensitive
    for _ in range(repeats):
        for variant, (train_function, iterator) in trainers.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                logs = train_function(iterator)
            float(logs["loss"])                      # wait for the last step
            rates[variant].append(steps * batch_size / (time.perf_counter() - start))
            cpu_rates[variant].append(steps * batch_size / (time.process_time() - cpu_start))

    def ratio(a, b, table=rates):
        r = np.asarray(table[a]) / np.asarray(table[b])
        return {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max()), "per_round": r.tolist()}

    first = next(iter(variants))
    pairs = ([(v, first) for v in variants if v != first] if custom else
             [("crocodile_cov", "crocodile_no_cov"), ("crocodile_cov", "mmoe"), ("crocodile_no_cov", "mmoe")])
    ratios = {f"{a} / {b}": ratio(a, b) for a, b in pairs}
    cpu_ratios = {f"{a} / {b}": ratio(a, b, table=cpu_rates) for a, b in pairs}
    return {
        "benchmark": "training_speed",
        "batch_size": batch_size, "steps_per_round": steps, "rounds": repeats, "warmup_steps": warmup_steps,
        "order": "interleaved " + " ".join(variants) + " per round",
        "threads": {"cpu_count": os.cpu_count(),
                    "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "hparams_overrides": hparams or {},
        "variants": sizes,
        "examples_per_second": {v: {"median": float(np.median(r)), "per_round": r} for v, r in rates.items()},
        "examples_per_cpu_second": {v: {"median": float(np.median(r)), "per_round": r} for v, r in cpu_rates.items()},
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
    }
