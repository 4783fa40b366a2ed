"""Offline A/B simulator throughput (impressions/s), the original path against the fast one; prints JSON.

Each repeat runs what `crocodile abtest offline --cuped-impressions` runs: a pre-period (stable
model for everyone) and the experiment (traffic, the router's assignment, the arms' models,
true clicks and purchases, the oracle). Two variants, interleaved (A B A B ...) after a warm-up:
- `exhaustive`: the original path: both models score all candidates of every request (the exact
  oracle) and the pre-period scores everything again.
- `fast` (the CLI's default): each distinct (user, domain, item) scored once per model, the other
  arm's model only on the oracle's sample of requests (`--oracle-requests` per domain; the report
  gives its sampling error), the pre-period ranked by the world's logging policy (no model
  evaluations; `--pre-period-ranker stable` keeps the stable model, whose scores are then reused).
Both variants see the same traffic and outcomes in the experiment (same seed per repeat; with a
stable-ranked pre-period the estimates are identical, tests/simulation/test_abtest.py).
Throughput = experiment impressions / wall time of pre-period + experiment (the SavedModels are
loaded once, before the timed runs; a fresh score cache per run), and the same per CPU second of
this process (all its threads): on the shared 2-core machine other jobs swing the wall-time
rates 2x between repeats, the CPU-time ratio much less. Models: two
world-rankers of different quality (crocodile.simulation.ab_reference_models) unless
--stable/--canary name real SavedModels (a real model costs more per example, so the fast path
saves more there).

    .venv/bin/python benchmarks/abtest_offline.py [--impressions 1000000] [--pre-period 500000] [--repeats 5]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VARIANTS = ("exhaustive", "fast")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The demo preset's world (4k users, 2k items) and 600k + 300k impressions: about 22 requests per
    # user. Score reuse grows with requests per user, so the speed-up depends on the run's size.
    parser.add_argument("--impressions", type=int, default=600_000, help="experiment impressions per repeat")
    parser.add_argument("--pre-period", type=int, default=300_000, help="pre-period impressions per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="demo", help="world preset (crocodile.simulation.presets)")
    parser.add_argument("--users", type=int, help="override the preset's users")
    parser.add_argument("--items", type=int, help="override the preset's items")
    parser.add_argument("--oracle-requests", type=int, default=1_500,
                        help="requests per domain both models score in the fast path: about 11%% of this run's "
                             "requests, the share the CLI's default (50,000 per domain) samples in a 20M-impression "
                             "run")
    parser.add_argument("--pre-period-ranker", choices=("logging-policy", "stable"), default="logging-policy",
                        help="who ranks the fast path's pre-period (the CLI's default: the logging policy)")
    parser.add_argument("--stable", help="stable SavedModel (default: a noisy world-ranker)")
    parser.add_argument("--canary", help="canary SavedModel (default: a less noisy world-ranker)")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from crocodile.serving.policy import CanaryPolicy
    from crocodile.simulation import ab_scorers, abtest, abtest_cli, presets
    from crocodile.simulation.ab_reference_models import save_world_ranker
    from crocodile.simulation.world import World, WorldConfig

    fields = presets.world_fields(args.preset)
    fields.update({k: v for k, v in (("num_users", args.users), ("num_items", args.items)) if v})
    world = World.create(WorldConfig(seed=0, **fields))
    scratch = tempfile.mkdtemp(prefix="abtest_bench_")
    stable = args.stable or save_world_ranker(world, os.path.join(scratch, "stable", "1"), noise=1.0, seed=1)
    canary = args.canary or save_world_ranker(world, os.path.join(scratch, "canary", "1"), noise=0.3, seed=2)
    policy = CanaryPolicy("bench", "salt", 0.5)
    # Loaded once: loading is a fixed cost of a command, not of its impressions.
    loaded = ab_scorers.SavedModelScorer(stable), ab_scorers.SavedModelScorer(canary)
    slate = world.config.slate_size
    requests, pre_requests = max(1, args.impressions // slate), max(1, args.pre_period // slate)

    def run(variant: str, seed: int, scale: float = 1.0) -> dict:
        exhaustive = variant == "exhaustive"
        requests_, pre_requests_ = max(1, int(requests * scale)), max(1, int(pre_requests * scale))
        started, cpu_started = time.perf_counter(), time.process_time()
        scorer = ab_scorers.OfflineScorer(world, policy, *loaded, exhaustive=exhaustive)
        chunk = abtest_cli.OFFLINE_REQUESTS_PER_CHUNK  # the same traffic in both variants
        pre_scorer = (scorer.pre_period() if exhaustive or args.pre_period_ranker == "stable"
                      else ab_scorers.LoggingPolicyScorer(world, seed))
        abtest.simulate(world, pre_scorer, pre_requests_, seed=seed + abtest.PRE_PERIOD_SEED_OFFSET,
                        chunk=chunk, progress=False)
        result = abtest.simulate(world, scorer, requests_, seed=seed, chunk=chunk, progress=False,
                                 oracle_requests=None if exhaustive else args.oracle_requests)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        lifts = abtest.oracle_lifts(result)["overall"]
        impressions = float(result.impressions.sum())
        return {"impressions_per_s": impressions / seconds, "seconds": seconds,
                "impressions_per_cpu_s": impressions / cpu_seconds, "cpu_seconds": cpu_seconds,
                "model_evaluations_per_impression": scorer.examples_scored / float(result.impressions.sum()),
                "oracle_ctr_lift": lifts["ctr"], "oracle_ctr_lift_se": lifts["ctr_se"],
                "clicks": int(result.clicks.sum())}

    load_before = os.getloadavg()[0]
    for variant in VARIANTS:  # warm-up on a tenth of the size: graph tracing, imports
        run(variant, seed=999, scale=0.1)
    runs = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(run(variant, seed=repeat))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{v} {runs[v][-1]['impressions_per_s']:,.0f} imp/s" for v in VARIANTS), file=sys.stderr)
        # Same seed, same traffic and outcomes: the fast path must not change what is measured.
        assert runs["fast"][-1]["clicks"] == runs["exhaustive"][-1]["clicks"]
    ratios, cpu_ratios = ([f[key] / e[key] for e, f in zip(runs["exhaustive"], runs["fast"])]
                          for key in ("impressions_per_s", "impressions_per_cpu_s"))

    def summary(variant):
        rates = [r["impressions_per_s"] for r in runs[variant]]
        cpu_rates = [r["impressions_per_cpu_s"] for r in runs[variant]]
        return {"impressions_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
                "impressions_per_cpu_s": {"median": statistics.median(cpu_rates), "min": min(cpu_rates),
                                          "max": max(cpu_rates)},
                "model_evaluations_per_impression": statistics.median(
                    r["model_evaluations_per_impression"] for r in runs[variant]),
                "oracle_ctr_lift_minus_exact": [f["oracle_ctr_lift"] - e["oracle_ctr_lift"]
                                                for e, f in zip(runs["exhaustive"], runs[variant])],
                "oracle_ctr_lift_se": [r["oracle_ctr_lift_se"] for r in runs[variant]]}

    print(json.dumps({
        "benchmark": "abtest_offline",
        "what": "pre-period + offline A/B experiment end to end; exhaustive (original) vs fast path, interleaved",
        "world": {"preset": args.preset, "users": world.num_users, "items": world.num_items,
                  "domains": world.num_domains,
                  "candidates_per_request": world.config.candidates_per_request, "slate_size": slate},
        "models": {"stable": args.stable or "world-ranker noise 1.0", "canary": args.canary or "world-ranker noise 0.3"},
        "impressions_per_repeat": requests * slate, "pre_period_impressions_per_repeat": pre_requests * slate,
        "oracle_requests_per_domain_fast": args.oracle_requests,
        "pre_period_ranker_fast": args.pre_period_ranker,
        "repeats": args.repeats,
        "variants": {v: summary(v) for v in VARIANTS},
        "paired_ratio_fast_over_exhaustive": {"median": statistics.median(ratios), "min": min(ratios),
                                              "max": max(ratios)},
        # CPU seconds of this process (all its threads): less sensitive to other work on a shared machine.
        "paired_cpu_ratio_fast_over_exhaustive": {"median": statistics.median(cpu_ratios), "min": min(cpu_ratios),
                                                  "max": max(cpu_ratios)},
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "cpu_count": os.cpu_count()},
        # The machine is shared: other work running at the same time slows every variant.
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__, "tensorflow": tf.__version__,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
