"""Seed noise of a real retrain: the same model trained twice on the same rows, scored on the same eval rows.

The blessing-rule trials (benchmarks/blessing_rules.py) simulate "equal" candidates as two
noisy scorers of the same quality. This script measures, once, how noisy a real retrain
is, so the simulation uses a measured noise level rather than a guess:

- both seeds' AUC overall and per domain;
- the correlation of their logits on the eval rows (what the simulation matches);
- the clustered-DeLong paired AUC difference of seed 1 vs seed 0 and its standard error.

It uses the quality benchmark's local TFT transform and Keras training (the pipeline's own
preprocessing_fn and registry models), not a TFX run, and writes the eval rows' labels,
domains, users, ``p_relevance`` and both score vectors to ``--out``/noise.npz.

    python benchmarks/blessing_noise.py --data /tmp/demo --model mmoe --out /tmp/noise
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def main(argv=None) -> int:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="world data folder (crocodile data generate)")
    parser.add_argument("--model", default="mmoe")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from crocodile.benchmarks.quality_benchmark import (EVAL_FRACTION, VALIDATION_FRACTION, load_truth, predict,
                                                        split_validation)
    from crocodile.model.comparison import paired_auc
    from crocodile.model.features import FeatureConfig
    from crocodile.model.registry import build_model
    from crocodile.model.training import fit
    from crocodile.pipeline.preprocessing import vocab_sizes
    from crocodile.pipeline.transform_local import analyze_and_transform, make_dataset

    import tensorflow as tf

    os.makedirs(args.out, exist_ok=True)
    config = FeatureConfig.load(os.path.join(args.data, "feature_config.json"))
    started = time.time()
    transformed = analyze_and_transform(args.data, os.path.join(args.out, "transform"), config,
                                        eval_fraction=EVAL_FRACTION)
    vocab = vocab_sizes(transformed.tft_output, config)
    fit_arrays, val_arrays = split_validation(transformed.train, VALIDATION_FRACTION)
    eval_arrays = transformed.eval
    scores = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        tf.keras.utils.set_random_seed(seed)
        model = build_model(args.model, config, vocab, {"seed": seed})
        fit(model, make_dataset(fit_arrays, model.hparams.batch_size, shuffle=True, seed=seed),
            make_dataset(val_arrays, 16384, shuffle=False), epochs=args.epochs, verbose=0)
        scores[seed] = predict(model.network, eval_arrays).reshape(-1)
        print(f"seed {seed} trained ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)

    labels = eval_arrays["click"].astype(np.int64)
    domains = eval_arrays["domain_id_xf"].astype(np.int64)
    users = eval_arrays["user_id"]
    relevance = load_truth(args.data, transformed.eval_raw)["p_relevance"].to_numpy()
    (s0, first), (s1, second) = list(scores.items())[:2]
    result = {
        "benchmark": "blessing_noise", "data": os.path.abspath(args.data), "model": args.model,
        "epochs": args.epochs, "eval_rows": int(labels.size), "eval_clicks": int(labels.sum()),
        "seconds": round(time.time() - started, 1),
        "logit_correlation": float(np.corrcoef(_logit(first), _logit(second))[0, 1]),
        "relevance_logit_correlation": {str(s): float(np.corrcoef(_logit(v), _logit(relevance))[0, 1])
                                        for s, v in scores.items()},
        "paired_overall": paired_auc(labels, first, second, users).to_dict(),
        "oracle_auc": paired_auc(labels, relevance, relevance).baseline_auc,
        "domains": {},
    }
    for d in np.unique(domains):
        rows = domains == d
        result["domains"][str(int(d))] = {
            "rows": int(rows.sum()),
            "logit_correlation": float(np.corrcoef(_logit(first[rows]), _logit(second[rows]))[0, 1]),
            "paired": paired_auc(labels[rows], first[rows], second[rows], users[rows]).to_dict()}
    np.savez_compressed(os.path.join(args.out, "noise.npz"), labels=labels, domains=domains, users=users,
                        relevance=relevance, **{f"seed{s}": v for s, v in scores.items()})
    print(json.dumps(result, indent=1))
    with open(os.path.join(args.out, "noise.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
