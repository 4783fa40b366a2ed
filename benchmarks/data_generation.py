"""Data generation throughput and peak memory: `crocodile data generate` without the CLI.

Each repeat runs in a fresh child process (so peak RSS is that run's own) and times the
world creation and the streamed log writing separately. Formats are interleaved across
repeats after one warm-up round. Prints JSON: medians of impressions/s, seconds, peak RSS,
RSS growth during generation (what the streaming costs) and the size of the output.

    .venv/bin/python benchmarks/data_generation.py [--impressions 1000000] [--repeats 5]
        [--formats csv,tfrecord]
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def child(impressions: int, fmt: str, out: str) -> dict:
    import crocodile  # noqa: F401
    from crocodile.simulation import dataset
    from crocodile.simulation.world import World, WorldConfig

    # Import costs are not generation costs: load the writers' libraries first.
    import pyarrow.csv  # noqa: F401
    import tqdm  # noqa: F401

    if fmt == "tfrecord":
        import tensorflow  # noqa: F401
        from tfx_bsl.coders import example_coder  # noqa: F401
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # noqa: E731  user + system
    started = time.perf_counter()
    world = World.create(WorldConfig(seed=0))
    created, cpu_created = time.perf_counter(), cpu()
    rows = dataset.write_world_dataset(out, world, impressions, seed=0, fmt=fmt, progress=False)
    finished, cpu_finished = time.perf_counter(), cpu()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files)
    return {
        "rows": rows,
        "world_create_s": created - started,
        "generate_s": finished - created,
        "generate_cpu_s": cpu_finished - cpu_created,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
        "output_mb": size / 2 ** 20,
    }


def run_child(impressions: int, fmt: str) -> dict:
    out = tempfile.mkdtemp(prefix="bench-data-")
    try:
        target = os.path.join(out, "data")
        proc = subprocess.run([sys.executable, __file__, "--child", fmt, "--impressions", str(impressions),
                               "--out", target], capture_output=True, text=True, check=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--formats", default="csv,tfrecord")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.impressions, args.child, args.out)))
        return 0
    formats = args.formats.split(",")
    for fmt in formats:  # warm-up: file cache, pyc files
        run_child(min(args.impressions, 50_000), fmt)
    runs = {fmt: [] for fmt in formats}
    for repeat in range(args.repeats):
        for fmt in formats:  # interleaved
            runs[fmt].append(run_child(args.impressions, fmt))
            print(f"repeat {repeat + 1}/{args.repeats} {fmt}: {runs[fmt][-1]['generate_s']:.1f}s", file=sys.stderr)
    result = {"benchmark": "data_generation", "impressions": args.impressions, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2), "world": "WorldConfig(seed=0) defaults", "formats": {}}
    for fmt, items in runs.items():
        med = lambda key: statistics.median(r[key] for r in items)  # noqa: E731
        result["formats"][fmt] = {
            "impressions_per_s": round(args.impressions / med("generate_s")),
            "impressions_per_s_incl_world": round(args.impressions / statistics.median(
                r["generate_s"] + r["world_create_s"] for r in items)),
            # CPU time is what the code costs; wall time also counts other load on the machine.
            "impressions_per_cpu_s": round(args.impressions / med("generate_cpu_s")),
            "generate_s_median": round(med("generate_s"), 2),
            "world_create_s_median": round(med("world_create_s"), 2),
            "peak_rss_mb_median": round(med("peak_rss_mb"), 1),
            "rss_growth_mb_median": round(med("peak_rss_mb") - med("rss_before_mb"), 1),
            "output_mb": round(med("output_mb"), 1),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
