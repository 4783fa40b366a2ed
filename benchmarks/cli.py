"""`crocodile benchmark quality|speed` (registered by crocodile.cli)."""
import json
import logging
import sys


def register(subparsers) -> None:
    """Adds this area's subcommands. Handlers import heavy modules lazily."""
    benchmark = subparsers.add_parser("benchmark", help="offline quality and training-speed benchmarks of the models")
    commands = benchmark.add_subparsers(dest="benchmark_command", metavar="BENCHMARK", required=True)

    quality = commands.add_parser("quality", help="train models on world logs; AUC/gAUC per domain vs the oracle")
    add_quality_arguments(quality)
    quality.set_defaults(handler=run_quality)

    speed = commands.add_parser("speed", help="examples/s of crocodile with and without CovLoss, and MMoE")
    add_speed_arguments(speed)
    speed.set_defaults(handler=run_speed)


def add_quality_arguments(parser) -> None:
    parser.add_argument("--data", help="data folder from `crocodile data generate` (logs/, feature_config.json, "
                                       "ground_truth/); if omitted, the `benchmark` preset world is generated "
                                       "under OUT/data")
    parser.add_argument("--budget", choices=("small", "full"), default="small",
                        help="fixed models/seeds/rows/epoch cap: small = crocodile, mmoe, single_domain, 5 seeds, "
                             "300k rows, 4 epochs (<= 30 min on 2 cores); full = every registered model and the "
                             "capacity-matched mmoe_wide, 5 seeds, all rows, 10 epochs (default: %(default)s)")
    parser.add_argument("--models", default=None, help="comma-separated model names (overrides the budget's)")
    parser.add_argument("--reference", default="crocodile",
                        help="model every other one is compared with, paired (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (overrides the budget's)")
    parser.add_argument("--out", required=True, help="new output folder for quality.json, quality.md and PNG plots")
    parser.add_argument("--impressions", type=int, default=None,
                        help="impressions to generate when --data is omitted (default: the preset's)")
    parser.add_argument("--max-rows", type=int, default=None, help="read at most this many log rows "
                                                                   "(overrides the budget's)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (overrides the budget's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run cut short in --out with the same settings (trains only what is missing)")
    parser.add_argument("--hparams", default=None, help='JSON dict of hyperparameter overrides, e.g. \'{"disentangle_weight": 1e-3}\'')


def add_speed_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=4096, help="examples per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds after warm-up (default: %(default)s)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--hparams", default=None, help="JSON dict of hyperparameter overrides")
    parser.add_argument("--variants", default=None,
                        help='JSON {"name": ["model", {overrides}], ...} to time instead of crocodile with / without '
                             'CovLoss and MMoE; ratios are then each variant over the first, e.g. '
                             '\'{"rows32": ["crocodile", {"disentangle_rows": 32}], "rows256": ["crocodile", '
                             '{"disentangle_rows": 256}]}\'')


def _hparams(text):
    from crocodile.errors import UserError
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--hparams: not JSON ({error})") from error
    if not isinstance(value, dict):
        raise UserError("--hparams: must be a JSON object")
    from crocodile.model.hparams import resolve
    try:
        resolve("crocodile", value)
    except (ValueError, TypeError) as error:
        raise UserError(f"--hparams: {error}") from error
    return value


def _generate(out: str, impressions) -> str:
    import os
    import subprocess
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "feature_config.json")):
        size = ["--impressions", str(impressions)] if impressions else []
        subprocess.run([sys.executable, "-m", "crocodile", "data", "generate", "--preset", "benchmark",
                        "--out", data, "--quiet", *size], check=True)
    return data


def _log_progress() -> None:
    """Progress lines on stderr (absl may already have configured the root logger)."""
    logger = logging.getLogger("crocodile.benchmark")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_quality(args) -> int:
    from crocodile.errors import UserError
    from crocodile.benchmarks.quality_benchmark import BUDGETS, all_models, run
    _log_progress()
    budget = BUDGETS[args.budget]
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        models = list(budget["models"] or all_models())
    if not models:
        raise UserError("--models: give at least one model name")
    hparams = _hparams(args.hparams)
    data = args.data or _generate(args.out, args.impressions)
    seeds = args.seeds if args.seeds is not None else budget["seeds"]
    max_rows = args.max_rows if args.max_rows is not None else budget["max_rows"]
    epochs = args.epochs if args.epochs is not None else budget["epochs"]
    report = run(data, models, seeds, args.out, max_rows=max_rows, epochs=epochs, hparams=hparams,
                 reference=args.reference, budget=args.budget, resume=args.resume)
    with open(f"{args.out}/quality.md") as f:
        print(f.read())
    print(f"wrote {args.out}/quality.json, quality.md and {len(report['plots'])} plots")
    return 0


def _variants(text):
    """--variants JSON -> {name: (model, overrides)}, each checked like --hparams."""
    from crocodile.errors import UserError
    from crocodile.model.hparams import resolve
    from crocodile.model.registry import MODEL_NAMES
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--variants: not JSON ({error})") from error
    if not isinstance(value, dict) or not value:
        raise UserError("--variants: must be a non-empty JSON object")
    variants = {}
    for name, spec in value.items():
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in MODEL_NAMES and isinstance(spec[1], dict)):
            raise UserError(f"--variants: {name!r} must be [model name, {{overrides}}] with a model from "
                            f"{', '.join(MODEL_NAMES)}")
        try:
            resolve(spec[0], spec[1])
        except (ValueError, TypeError) as error:
            raise UserError(f"--variants: {name!r}: {error}") from error
        variants[name] = (spec[0], spec[1])
    return variants


def run_speed(args) -> int:
    from crocodile.benchmarks.speed_benchmark import run
    result = run(batch_size=args.batch_size, steps=args.steps, repeats=args.repeats, hparams=_hparams(args.hparams),
                 variants=_variants(getattr(args, "variants", None)))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0
