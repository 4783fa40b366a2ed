"""`crocodile data generate|describe|convert` (registered by crocodile.cli).

Handlers import numpy, pandas and TensorFlow lazily so `crocodile --help` stays fast.
"""
import json
import sys
import time

from crocodile.errors import UserError

# `--flag` -> WorldConfig field, for the world knobs the generate command exposes.
WORLD_FLAGS = {
    "users": "num_users",
    "items": "num_items",
    "slate_size": "slate_size",
    "candidates": "candidates_per_request",
    "random_exposure": "random_exposure_share",
    "days": "days",
}
DEFAULT_IMPRESSIONS = 200_000


def register(subparsers) -> None:
    """Adds this area's subcommands. Handlers import heavy modules lazily."""
    data = subparsers.add_parser("data", help="generate, describe and convert impression logs")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    gen = commands.add_parser("generate", help="simulate a multi-domain world and write its logs")
    gen.add_argument("--out", required=True, help="new (or empty) output folder")
    gen.add_argument("--preset", help="a named world fixed before any model comparison: "
                                      "demo | benchmark | null (see simulation/README.md); other flags apply on top")
    gen.add_argument("--impressions", type=int,
                     help="number of log rows (default: the preset's, else 200000)")
    gen.add_argument("--seed", type=int, default=0, help="seeds the world and the logs")
    gen.add_argument("--format", choices=("csv", "tfrecord"), default="csv", help="log file format")
    gen.add_argument("--shards", type=int, default=1, help="number of log files")
    gen.add_argument("--world", help="reuse a saved world folder (DIR/world) instead of creating one")
    gen.add_argument("--users", type=int, help="number of users (default 10000)")
    gen.add_argument("--items", type=int, help="number of items (default 2000)")
    gen.add_argument("--slate-size", type=int, help="impressions per request (default 10)")
    gen.add_argument("--candidates", type=int, help="candidates the logging policy ranks per request (default 30)")
    gen.add_argument("--random-exposure", type=float, help="share of uniformly random slots (default 0.05)")
    gen.add_argument("--days", type=int, help="days the timestamps span (default 14)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(handler=generate_command)

    desc = commands.add_parser("describe", help="per-domain statistics and oracle AUC/gAUC of a data folder")
    desc.add_argument("data_dir", metavar="DIR")
    desc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    desc.set_defaults(handler=describe_command)

    conv = commands.add_parser("convert", help="convert KuaiRand-1K or AliCCP files to the canonical schema")
    conv.add_argument("--format", required=True, dest="dataset_format", help="kuairand | aliccp")
    conv.add_argument("--input", required=True, nargs="+", help="input CSV file(s)")
    conv.add_argument("--out", required=True, help="new (or empty) output folder")
    conv.add_argument("--shards", type=int, default=1, help="number of TFRecord files")
    conv.set_defaults(handler=convert_command)


def generate_command(args) -> int:
    from crocodile.simulation import dataset, presets, staging
    from crocodile.simulation.world import World, WorldConfig

    preset = presets.world_fields(args.preset) if args.preset else {}
    if args.impressions is None:
        args.impressions = presets.get(args.preset).impressions if args.preset else DEFAULT_IMPRESSIONS
    if args.impressions < 1:
        raise UserError(f"--impressions must be >= 1, got {args.impressions}")
    if args.shards < 1:
        raise UserError(f"--shards must be >= 1, got {args.shards}")
    overrides = {field: getattr(args, flag) for flag, field in WORLD_FLAGS.items() if getattr(args, flag) is not None}
    staging.check_output_dir(args.out)
    started = time.time()
    if args.world:
        if overrides or preset:
            flags = [f"--{flag.replace('_', '-')}" for flag in WORLD_FLAGS if getattr(args, flag) is not None]
            raise UserError(f"--world {args.world}: cannot be combined with {', '.join(flags + (['--preset'] if preset else []))}")
        world = World.load(args.world)
    else:
        world = World.create(WorldConfig(seed=args.seed, **{**preset, **overrides}))
    with staging.staged_output_dir(args.out) as tmp:
        rows = dataset.write_world_dataset(tmp, world, args.impressions, args.seed, args.format,
                                           args.shards, progress=not args.quiet)
    seconds = time.time() - started
    print(f"wrote {rows:,} impressions ({args.format}, {args.shards} shard(s)) to {args.out} "
          f"in {seconds:.1f}s; see `crocodile data describe {args.out}`", file=sys.stderr)
    return 0


def describe_command(args) -> int:
    from crocodile.simulation import describe

    summary = describe.describe(args.data_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(describe.format_table(summary))
    return 0


def convert_command(args) -> int:
    from crocodile.simulation import adapters

    rows = adapters.convert(args.dataset_format, args.input, args.out, num_shards=args.shards)
    print(f"wrote {rows:,} impressions to {args.out}", file=sys.stderr)
    return 0
