"""`crocodile abtest live|offline`: the simulated online A/B test and its report.

Registered by crocodile.cli through `register(subparsers)`. TensorFlow, gRPC and matplotlib
are imported inside the handlers so `crocodile --help` stays fast.
"""
import os
import time

from crocodile.errors import UserError

# Requests per domain scored by both models for the oracle (about 10% of a 20M-impression run's
# requests); the report prints the oracle's resulting sampling error beside it.
DEFAULT_ORACLE_REQUESTS = 50_000
OFFLINE_REQUESTS_PER_CHUNK = 8192  # larger chunks: fewer score-cache merges


def register(subparsers) -> None:
    parser = subparsers.add_parser("abtest", help="simulated online A/B test of CTR and GMV (live or offline)")
    modes = parser.add_subparsers(dest="abtest_mode", metavar="MODE", required=True)

    live = modes.add_parser("live", help="send world traffic through the canary router over gRPC")
    live.add_argument("--target", required=True, help="router address HOST:PORT")
    live.add_argument("--world", required=True, help="data folder from `crocodile data generate`, or a world folder")
    live.add_argument("--users", type=int, required=True, help="user visits to simulate (one request each)")
    live.add_argument("--report", required=True, help="output folder for report.json/.md and plots")
    live.add_argument("--policy", help="the router's policy YAML (enables the sample-ratio check)")
    live.add_argument("--stable", help="stable SavedModel, to compute the oracle lift in-process (optional)")
    live.add_argument("--canary", help="canary SavedModel, to compute the oracle lift in-process (optional)")
    live.add_argument("--seed", type=int, default=0, help="seeds the traffic and the outcomes")
    live.add_argument("--candidate-status", metavar="TEXT",
                      help="what the pipeline decided about the canary, printed next to the simulated truth")
    _decision_flags(live)
    live.add_argument("--quiet", action="store_true", help="no progress bar")
    live.set_defaults(handler=live_command)

    offline = modes.add_parser("offline", help="score both SavedModels in-process; millions of impressions")
    offline.add_argument("--stable", required=True, help="stable SavedModel (or a base path with versions)")
    offline.add_argument("--canary", help="canary SavedModel (ignored with --aa)")
    offline.add_argument("--policy", required=True, help="canary policy YAML (the router's assignment)")
    offline.add_argument("--world", required=True, help="data folder from `crocodile data generate`, or a world folder")
    offline.add_argument("--impressions", type=int, required=True, help="impressions to simulate (both arms)")
    offline.add_argument("--report", required=True, help="output folder for report.json/.md and plots")
    offline.add_argument("--aa", action="store_true", help="A/A test: the stable model in both arms")
    offline.add_argument("--cuped-impressions", type=int, default=0,
                         help="simulate this many pre-period impressions (ranked for everyone as "
                              "--pre-period-ranker says) and CUPED-adjust every metric with them (default 0: off)")
    offline.add_argument("--pre-period-ranker", choices=("logging-policy", "stable"), default="logging-policy",
                         help="who ranks the CUPED pre-period: the world's logging policy (the production ranking "
                              "that wrote the training logs; no model evaluations, default) or the stable model "
                              "(its scores are then reused by the experiment)")
    offline.add_argument("--seed", type=int, default=0, help="seeds the traffic and the outcomes")
    offline.add_argument("--candidate-status", metavar="TEXT",
                         help="what the pipeline decided about the canary, printed next to the simulated truth "
                              "(e.g. \"not blessed by the pipeline\"): the offline A/B runs either way")
    offline.add_argument("--oracle-requests", default=str(DEFAULT_ORACLE_REQUESTS), metavar="N|all",
                         help="requests per domain that BOTH models score for the oracle lift (a random sample; "
                              "the report gives the oracle's sampling error); 'all' scores every request "
                              f"(default {DEFAULT_ORACLE_REQUESTS:,})")
    offline.add_argument("--exhaustive-scoring", action="store_true",
                         help="the original, slower path: both models score every candidate, no score reuse, "
                              "exact oracle (for comparisons)")
    _decision_flags(offline)
    offline.add_argument("--quiet", action="store_true", help="no progress bar")
    offline.set_defaults(handler=offline_command)


def _decision_flags(parser) -> None:
    from crocodile.simulation.ab_verdict import ALWAYS_VALID, FIXED_HORIZON

    parser.add_argument("--decide-with", choices=(FIXED_HORIZON, ALWAYS_VALID), default=FIXED_HORIZON,
                        help="which p-value of the primary metric (CTR) decides the verdict: fixed-horizon (the run "
                             "is read once, at its planned size; default) or always-valid (mSPRT; for a run that "
                             "was watched and may have been stopped early)")


def _oracle_requests(value: str):
    """--oracle-requests: a positive integer, or 'all' (None: every request)."""
    if value == "all":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"--oracle-requests must be a positive integer or 'all', got {value!r}")
    return number


def load_world(path: str):
    from crocodile.simulation.world import World

    nested = os.path.join(path, "world")
    if not os.path.isdir(path):
        raise UserError(f"--world {path}: no such folder")
    return World.load(nested if os.path.isdir(nested) else path)


def _positive(value: int, flag: str) -> int:
    if value is None or value < 1:
        raise UserError(f"{flag} must be a positive integer, got {value}")
    return value


def _finish(result, shares, meta: dict, report_dir: str, started: float, args, pre_period=None) -> int:
    from crocodile.simulation import report

    meta["wall_seconds"] = round(time.time() - started, 1)
    if args.candidate_status:
        meta["candidate_status"] = args.candidate_status
    built = report.build_report(result, shares, meta, pre_period=pre_period, decide_with=args.decide_with)
    paths = report.write_report(built, report_dir)
    for line in report.conclusions(built):
        print(line.replace("**", ""))
    print(f"report: {paths['markdown']} (also {os.path.basename(paths['json'])}, "
          f"{os.path.basename(paths['lift_plot'])}, {os.path.basename(paths['cumulative_plot'])})")
    return 0


def offline_command(args) -> int:
    from crocodile.serving.policy import CanaryPolicy
    from crocodile.simulation import ab_scorers, abtest

    started = time.time()
    impressions = _positive(args.impressions, "--impressions")
    if not args.aa and not args.canary:
        raise UserError("--canary is required unless --aa is given")
    oracle_requests = _oracle_requests(args.oracle_requests)
    if args.exhaustive_scoring:
        oracle_requests = None
    if args.cuped_impressions < 0:
        raise UserError(f"--cuped-impressions must be >= 0, got {args.cuped_impressions}")
    world = load_world(args.world)
    policy = CanaryPolicy.load(args.policy)
    canary_path = args.stable if args.aa else args.canary
    scorer = ab_scorers.OfflineScorer(world, policy, args.stable, canary_path, exhaustive=args.exhaustive_scoring)
    pre_period = None
    if args.cuped_impressions:
        pre_requests = -(-args.cuped_impressions // world.config.slate_size)
        pre_scorer = (scorer.pre_period() if args.pre_period_ranker == "stable" or args.exhaustive_scoring
                      else ab_scorers.LoggingPolicyScorer(world, args.seed))
        pre_period = abtest.simulate(world, pre_scorer, pre_requests, chunk=OFFLINE_REQUESTS_PER_CHUNK,
                                     seed=args.seed + abtest.PRE_PERIOD_SEED_OFFSET, progress=not args.quiet)
    num_requests = max(1, -(-impressions // world.config.slate_size))
    result = abtest.simulate(world, scorer, num_requests, seed=args.seed, progress=not args.quiet,
                             chunk=OFFLINE_REQUESTS_PER_CHUNK, oracle_requests=oracle_requests)
    meta = {"mode": "offline A/A" if args.aa else "offline", "stable": args.stable, "canary": canary_path,
            "policy": args.policy, "experiment": policy.experiment, "world": args.world,
            "requests": num_requests, "impressions": int(result.impressions.sum()), "seed": args.seed,
            "cuped_pre_period_impressions": 0 if pre_period is None else int(pre_period.impressions.sum()),
            "cuped_pre_period_ranker": ("stable" if args.exhaustive_scoring else args.pre_period_ranker)
            if pre_period is not None else None,
            "scoring": "exhaustive" if args.exhaustive_scoring else "each (user, domain, item) once per model",
            "oracle_requests_per_domain": "all" if oracle_requests is None else oracle_requests,
            "model_evaluations": scorer.examples_scored}
    return _finish(result, abtest.policy_canary_shares(policy, world.num_domains), meta, args.report, started,
                   args, pre_period)


def live_command(args) -> int:
    from crocodile.simulation import ab_scorers, abtest

    started = time.time()
    visits = _positive(args.users, "--users")
    world = load_world(args.world)
    policy = None
    if args.policy:
        from crocodile.serving.policy import CanaryPolicy
        policy = CanaryPolicy.load(args.policy)
    oracle = None
    if args.stable or args.canary:
        if not (args.stable and args.canary):
            raise UserError("--stable and --canary go together (both models are needed for the oracle lift)")
        oracle = ab_scorers.ModelPair(world, args.stable, args.canary)
    scorer = ab_scorers.LiveScorer(world, args.target, oracle)
    result = abtest.simulate(world, scorer, visits, seed=args.seed, chunk=256, progress=not args.quiet)
    versions = sorted({int(v) for v in result.version if v >= 0})
    meta = {"mode": "live", "target": args.target, "policy": args.policy or "none (no SRM check)",
            "world": args.world, "requests": visits, "impressions": int(result.impressions.sum()),
            "model_versions_seen": versions, "seed": args.seed}
    return _finish(result, abtest.policy_canary_shares(policy, world.num_domains), meta, args.report, started, args)
