"""Which offline per-domain statistic tells the online outcome: pooled AUC (the blessing gate's) or gAUC.

For every pair of the given SavedModels (trained by the pipeline on the same world), per domain:
- offline, on the same eval rows: the paired difference of the AUC pooled over the domain's rows
  (what crocodile.model.comparison.blessing_decision tests) and of the gAUC (per-user AUC, rows
  weighted), each with its user-clustered 95% interval (crocodile.model.comparison);
- online truth: the oracle CTR lift of the domain, i.e. the ratio of expected clicks of the lists
  the two models would show on the same simulated requests of that domain, from the world's true
  probabilities (crocodile.simulation.abtest.expected_outcomes_of_ranking), with the standard error
  of that ratio over the sampled requests (delta method).

Fixed before any run: the pairs are every pair of the models given, the later one as candidate;
a cell's oracle lift is "clear" when |lift| >= 2 of its standard errors; an offline statistic is
"decided" when its interval excludes 0. Reported per statistic over all (pair, domain) cells: the
Spearman correlation of its difference with the oracle lift, and among cells where both are
clear/decided, how many agree in sign and how many contradict it. Prints JSON; writes the JSON and
a scatter plot (offline difference vs oracle lift, one panel per statistic) to --out.

  python benchmarks/gate_metric_study.py --world DATA --eval-split SPLIT \\
      --model mmoe=DIR --model crocodile=DIR ... [--requests-per-domain 20000] --out DIR

DATA: the folder `crocodile data generate` wrote (its world/ is the truth); SPLIT: the pipeline's
ExampleGen eval split (``<pipeline_root>/ImportExampleGen/examples/<id>/Split-eval``); DIR: a
SavedModel (e.g. ``<pipeline_root>/Trainer/model/<id>/Format-Serving``).
"""
import argparse
import itertools
import json
import os
import time

import numpy as np

import crocodile  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from crocodile.benchmarks.local_processes import progress
from crocodile.errors import UserError
from crocodile.model.comparison import STATISTICS

CLEAR_Z = 2.0
CHUNK_REQUESTS = 4096
log = progress("gate_metric_study")


def parse_models(values):
    models = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--model {value!r}: expected NAME=SAVED_MODEL_DIR")
        if name in models:
            raise UserError(f"--model {name}: given twice")
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise UserError(f"--model {name}: {path} holds no saved_model.pb")
        models[name] = path
    if len(models) < 2:
        raise UserError("give at least two --model NAME=DIR")
    return models


def oracle_clicks(world, models, requests_per_domain: int, seed: int):
    """{domain: {model: expected clicks per request}} on the same sampled requests of each domain."""
    from crocodile.simulation.ab_scorers import CachedModel, ExampleEncoder, SavedModelScorer
    from crocodile.simulation.abtest import expected_outcomes_of_ranking, sample_traffic

    encoder = ExampleEncoder(world)
    scorers = {name: CachedModel(world, encoder, SavedModelScorer(path)) for name, path in models.items()}
    prices = world.item_features(np.arange(world.num_items))["price"]
    k, num_candidates = world.config.slate_size, world.config.candidates_per_request
    out = {}
    for domain in range(world.num_domains):
        rng = np.random.default_rng([seed, domain])
        clicks = {name: [] for name in models}
        for start in range(0, requests_per_domain, CHUNK_REQUESTS):
            n = min(CHUNK_REQUESTS, requests_per_domain - start)
            user, dom, candidates = sample_traffic(world, rng, n, num_candidates, domain)
            for name, scorer in scorers.items():
                clicks[name].append(expected_outcomes_of_ranking(world, user, dom, candidates,
                                                                 scorer(user, dom, candidates), k, prices)[0])
        out[domain] = {name: np.concatenate(parts) for name, parts in clicks.items()}
        log(f"oracle: domain {domain} done ({requests_per_domain:,} requests, {len(models)} models)")
    return out


def ratio_lift(baseline: np.ndarray, candidate: np.ndarray):
    """mean(candidate) / mean(baseline) - 1 over the same requests, and its delta-method standard error."""
    lift = candidate.mean() / baseline.mean() - 1.0
    linear = (candidate - (1.0 + lift) * baseline) / baseline.mean()
    return float(lift), float(linear.std(ddof=1) / np.sqrt(linear.size))


def cells(rows, scores, clicks, domains):
    """One record per (pair, domain): offline paired differences and the oracle lift."""
    from crocodile.model.comparison import paired_auc, paired_gauc

    records = []
    for baseline, candidate in itertools.combinations(list(scores), 2):
        for domain in domains:
            on = rows.domains == domain
            auc = paired_auc(rows.labels[on], scores[baseline][on], scores[candidate][on], rows.users[on])
            gauc = paired_gauc(rows.labels[on], scores[baseline][on], scores[candidate][on], rows.users[on])
            lift, se = ratio_lift(clicks[domain][baseline], clicks[domain][candidate])
            records.append({
                "baseline": baseline, "candidate": candidate, "domain": int(domain),
                "clicks": int(rows.labels[on].sum()), "rows": int(on.sum()),
                "auc": {"diff": auc.diff, "ci_low": auc.ci_low, "ci_high": auc.ci_high},
                "gauc": (None if gauc is None else
                         {"diff": gauc.diff, "ci_low": gauc.ci_low, "ci_high": gauc.ci_high}),
                "oracle_ctr_lift": lift, "oracle_ctr_lift_se": se})
    return records


def summarise(records):
    from scipy.stats import spearmanr

    summary = {}
    for statistic in STATISTICS:
        usable = [r for r in records if r[statistic] is not None]
        diffs = np.array([r[statistic]["diff"] for r in usable])
        lifts = np.array([r["oracle_ctr_lift"] for r in usable])
        agree = contradict = 0
        contradictions = []
        for r in usable:
            clear = abs(r["oracle_ctr_lift"]) >= CLEAR_Z * r["oracle_ctr_lift_se"]
            decided = r[statistic]["ci_low"] > 0 or r[statistic]["ci_high"] < 0
            if clear and decided:
                if np.sign(r[statistic]["diff"]) == np.sign(r["oracle_ctr_lift"]):
                    agree += 1
                else:
                    contradict += 1
                    contradictions.append(f"{r['candidate']} vs {r['baseline']}, domain {r['domain']}: "
                                          f"{statistic} {r[statistic]['diff']:+.4f} "
                                          f"[{r[statistic]['ci_low']:+.4f}, {r[statistic]['ci_high']:+.4f}], "
                                          f"oracle CTR lift {r['oracle_ctr_lift']:+.2%}")
        rho = spearmanr(diffs, lifts)
        summary[statistic] = {"cells": len(usable), "spearman_with_oracle_lift": round(float(rho.correlation), 3),
                              "both_decided_agree": agree, "both_decided_contradict": contradict,
                              "contradictions": contradictions}
    return summary


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted({r["domain"] for r in records})
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(11, 4.5), sharey=True)
    for ax, statistic in zip(axes, STATISTICS):
        for domain in domains:
            mine = [r for r in records if r["domain"] == domain and r[statistic] is not None]
            x = np.array([r[statistic]["diff"] for r in mine])
            xerr = np.array([[r[statistic]["diff"] - r[statistic]["ci_low"], r[statistic]["ci_high"] - r[statistic]["diff"]]
                             for r in mine]).T
            y = np.array([100 * r["oracle_ctr_lift"] for r in mine])
            yerr = np.array([100 * 1.96 * r["oracle_ctr_lift_se"] for r in mine])
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=4, alpha=0.7, color=colours(domain),
                        label=f"domain {domain}")
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"paired {'pooled AUC' if statistic == 'auc' else 'gAUC'} difference (candidate - baseline)")
        ax.set_title(f"{'pooled AUC (the gate)' if statistic == 'auc' else 'gAUC'} vs the true CTR lift")
    axes[0].set_ylabel("oracle CTR lift of the domain (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True, help="folder written by `crocodile data generate`")
    parser.add_argument("--eval-split", required=True, help="ExampleGen's Split-eval folder (gzipped TFRecords)")
    parser.add_argument("--model", action="append", default=[], help="NAME=SAVED_MODEL_DIR, at least two")
    parser.add_argument("--requests-per-domain", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for gate_metric_study.json and .png (must not exist)")
    args = parser.parse_args(argv)
    from crocodile.pipeline.model_compare import examples_split_rows, score
    from crocodile.simulation.abtest_cli import load_world

    models = parse_models(args.model)
    if os.path.exists(args.out):
        raise UserError(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    if args.requests_per_domain < 2:
        raise UserError("--requests-per-domain must be at least 2")
    started = time.time()
    world = load_world(args.world)
    rows = examples_split_rows(args.eval_split)
    log(f"{len(rows):,} eval rows, {int(rows.labels.sum()):,} clicks; scoring them with {len(models)} models")
    scores = {name: score(path, rows.serialized) for name, path in models.items()}
    clicks = oracle_clicks(world, models, args.requests_per_domain, args.seed)
    records = cells(rows, scores, clicks, range(world.num_domains))
    report = {"benchmark": "gate_metric_study", "models": models, "world": os.path.abspath(args.world),
              "eval_split": os.path.abspath(args.eval_split), "eval_rows": len(rows),
              "requests_per_domain": args.requests_per_domain, "seed": args.seed, "clear_oracle_z": CLEAR_Z,
              "summary": summarise(records), "cells": records, "seconds": round(time.time() - started, 1)}
    os.makedirs(args.out)
    with open(os.path.join(args.out, "gate_metric_study.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot(records, os.path.join(args.out, "gate_metric_study.png"))
    log(f"plot: {os.path.join(args.out, 'gate_metric_study.png')}")
    print(json.dumps({k: v for k, v in report.items() if k != "cells"}, indent=2))
    return 0


if __name__ == "__main__":
    from crocodile import console

    library_log = console.quiet("gate_metric_study")
    if library_log:
        log(f"library messages: {library_log}")
    try:
        code = main()
    except UserError as error:
        log(f"error: {error}")
        code = 2
    console.exit_process(code)
