"""Offline A/B simulator throughput (impressions/s) on a generated world; prints JSON.

Each repeat simulates `--impressions` impressions end to end (traffic, the router's assignment,
both SavedModels scoring every candidate, true clicks and purchases, the exact oracle). Two
variants are interleaved (A B A B ...) after a warm-up: requests per model call 16 (480 examples, near per-request serving) vs 2048,
so the paired ratio shows what batching buys. Models: two world-rankers of different quality
(crocodile.simulation.ab_reference_models) unless --stable/--canary name real SavedModels.

    .venv/bin/python benchmarks/abtest_offline.py [--impressions 200000] [--repeats 5]
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

VARIANTS = {"chunk_16": 16, "chunk_2048": 2048}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=200_000, help="impressions per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--stable", help="stable SavedModel (default: a noisy world-ranker)")
    parser.add_argument("--canary", help="canary SavedModel (default: a less noisy world-ranker)")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from crocodile.serving.policy import CanaryPolicy
    from crocodile.simulation import ab_scorers, abtest
    from crocodile.simulation.ab_reference_models import save_world_ranker
    from crocodile.simulation.world import World, WorldConfig

    world = World.create(WorldConfig(seed=0, num_users=args.users, num_items=args.items))
    scratch = tempfile.mkdtemp(prefix="abtest_bench_")
    stable = args.stable or save_world_ranker(world, os.path.join(scratch, "stable", "1"), noise=1.0, seed=1)
    canary = args.canary or save_world_ranker(world, os.path.join(scratch, "canary", "1"), noise=0.3, seed=2)
    policy = CanaryPolicy("bench", "salt", 0.5)
    scorer = ab_scorers.OfflineScorer(world, policy, stable, canary)
    requests = max(1, args.impressions // world.config.slate_size)

    def run(chunk: int, seed: int) -> float:
        started = time.perf_counter()
        result = abtest.simulate(world, scorer, requests, seed=seed, chunk=chunk, progress=False)
        return float(result.impressions.sum()) / (time.perf_counter() - started)

    load_before = os.getloadavg()[0]
    for chunk in VARIANTS.values():  # warm-up: graph tracing, caches
        run(chunk, seed=999)
    rates = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, chunk in VARIANTS.items():
            rates[name].append(run(chunk, seed=repeat))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} imp/s" for n in VARIANTS),
              file=sys.stderr)
    ratios = [b / a for a, b in zip(rates["chunk_16"], rates["chunk_2048"])]
    print(json.dumps({
        "benchmark": "abtest_offline",
        "what": "end-to-end offline A/B simulation: traffic, assignment, both models score all candidates, "
                "true clicks/purchases, exact oracle",
        "world": {"users": args.users, "items": args.items, "domains": world.num_domains,
                  "candidates_per_request": world.config.candidates_per_request,
                  "slate_size": world.config.slate_size},
        "models": {"stable": args.stable or "world-ranker noise 1.0", "canary": args.canary or "world-ranker noise 0.3"},
        "impressions_per_repeat": requests * world.config.slate_size,
        "scores_per_impression": 2 * world.config.candidates_per_request / world.config.slate_size,
        "repeats": args.repeats,
        "impressions_per_s": {name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                              for name, v in rates.items()},
        "paired_ratio_chunk_2048_over_16": {"median": statistics.median(ratios), "min": min(ratios),
                                             "max": max(ratios)},
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
