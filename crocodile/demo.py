"""`crocodile demo`: the main job end to end on embedded defaults, in about 15 minutes on 2 cores.

Every step is the same `crocodile` command a user would type, run as a child process,
so the demo exercises the real entry points:

1. generate world logs (the `demo` world preset, sharded TFRecord);
2. run the TFX pipeline with `mmoe` (first push = `stable`);
3. run it with `crocodile` (evaluated against it, pushed only if blessed = `canary`);
4. start the embedded model server and the canary router on the pushed versions and
   score one request per domain with `crocodile score`;
5. a live A/B through the router (a few thousand requests; only blessed versions are
   routed), then shut both down;
6. an offline A/B of the trained candidate against stable, whether or not the pipeline
   blessed it, so the report shows the simulated truth next to the pipeline's decision.

Each child prints its own progress; library noise of all of them goes to
OUT/logs/library.log (crocodile.console; `--verbose` shows it). The demo ends with a
summary: what was pushed and why, the blessing per domain, the A/B verdict, the paths
of the reports and plots, and the wall time of each step (also in OUT/demo_summary.json).

`--full` keeps the offline A/B sized for a 1% CTR minimum detectable effect (20M
impressions plus a 10M pre-period for CUPED; about 20 more minutes).
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time

# Embedded defaults (sized for a 2-core machine).
DEMO_SEED = 7
DEMO_PRESET = "demo"
LOG_FORMAT = "tfrecord"  # ExampleGen imports serialized examples: no CSV parsing
LOG_SHARDS = 4
STABLE_MODEL = "mmoe"
CANARY_MODEL = "crocodile"
MODEL_NAME = "crocodile"
MODEL_SERVER_PORT = 8500
ROUTER_PORT = 8600
ROUTER_METRICS_PORT = 8601
LIVE_AB_USERS = 3_000
# Default offline A/B: a few minutes, enough to see a lift of a few percent. --full: sized
# for a 1% CTR lift (alpha 0.05, power 0.8): with user-level randomisation the minimum
# detectable effect shrinks with users as well as impressions; at ~4.5% CTR, 20k users x
# 2M impressions gave +-3.0% with CUPED, so 1% needs ~10x both, with a pre-period for
# CUPED. The report prints the MDE the run actually reached.
OFFLINE_AB_IMPRESSIONS = 3_000_000
OFFLINE_AB_PRE_PERIOD_IMPRESSIONS = 1_500_000
FULL_OFFLINE_AB_IMPRESSIONS = 20_000_000
FULL_OFFLINE_AB_PRE_PERIOD_IMPRESSIONS = 10_000_000
AB_POLICY_FILE = "even_split_policy.yaml"
SERVER_START_TIMEOUT_S = 180
LIBRARY_LOG = "library.log"
SUMMARY_FILE = "demo_summary.json"
STEPS = 6


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the main job end to end on embedded defaults")
    parser.add_argument("--out", default="demo_out", help="folder for every output of the demo")
    parser.add_argument("--preset", default=DEMO_PRESET, help="world preset of `data generate`")
    parser.add_argument("--impressions", type=int, default=None,
                        help="world log size (default: the preset's)")
    parser.add_argument("--users", type=int, default=None, help="users in the world (default: the preset's)")
    parser.add_argument("--full", action="store_true",
                        help=f"offline A/B sized for a 1%% CTR lift ({FULL_OFFLINE_AB_IMPRESSIONS:,} impressions "
                             f"+ {FULL_OFFLINE_AB_PRE_PERIOD_IMPRESSIONS:,} pre-period)")
    parser.add_argument("--offline-impressions", type=int, default=None,
                        help=f"offline A/B impressions (default {OFFLINE_AB_IMPRESSIONS:,}; "
                             f"{FULL_OFFLINE_AB_IMPRESSIONS:,} with --full)")
    parser.add_argument("--pre-period-impressions", type=int, default=None,
                        help="pre-period traffic for CUPED in the offline A/B, 0 turns CUPED off "
                             f"(default {OFFLINE_AB_PRE_PERIOD_IMPRESSIONS:,}; "
                             f"{FULL_OFFLINE_AB_PRE_PERIOD_IMPRESSIONS:,} with --full)")
    parser.set_defaults(handler=run)


class _Steps:
    """Step headers with the demo's elapsed time; remembers each step's wall time."""

    def __init__(self):
        self.started = time.time()
        self.seconds = {}
        self._current = None

    def start(self, number: int, title: str) -> None:
        self.finish()
        self._current = (f"{number}/{STEPS} {title}", time.time())
        elapsed = time.time() - self.started
        print(f"\n=== [{elapsed // 60:02.0f}:{elapsed % 60:02.0f}] step {number}/{STEPS}: {title}", flush=True)

    def finish(self) -> None:
        if self._current is not None:
            name, began = self._current
            self.seconds[name] = round(time.time() - began, 1)
            self._current = None


def _command(args, note: str = "") -> list:
    """The child-process command for `crocodile ARGS`, echoed as a user would type it."""
    print("$ crocodile " + " ".join(map(str, args)) + note, flush=True)
    return [sys.executable, "-m", "crocodile", *map(str, args)]


def _crocodile(*args: str) -> None:
    subprocess.run(_command(args), check=True, stderr=_terminal_stderr())


def _terminal_stderr():
    """Children's stderr: the terminal (sys.stderr), not descriptor 2, which holds the library log."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):  # a captured stream (tests)
        return None


def _pushed_versions(serving_dir: str):
    paths = glob.glob(os.path.join(serving_dir, MODEL_NAME, "*", "saved_model.pb"))
    return sorted(int(os.path.basename(os.path.dirname(p))) for p in paths)


def _start(args, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(_command(args, f"  (log: {log_path})"), stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(target: str, process) -> None:
    import grpc

    deadline = time.time() + SERVER_START_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server for {target} exited with code {process.returncode}")
            try:
                grpc.channel_ready_future(channel).result(timeout=2)
                return
            except grpc.FutureTimeoutError:
                continue
    raise RuntimeError(f"server for {target} did not start within {SERVER_START_TIMEOUT_S}s")


def _stop(process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # graceful: drain in-flight requests, flush logs
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _score_request_json(world, domain: int, out_dir: str, n_items: int = 5):
    """One user of `domain` and a few of its candidate items, with the features `score` sends."""
    import json

    import numpy as np

    from crocodile.model.features import ITEM_KEY, USER_KEY

    rng = np.random.default_rng(DEMO_SEED + domain)
    users, _ = world.sample_requests(rng, 1)
    items = world.sample_candidates(rng, domain, 1, n_items)[0]
    user = {k: v[0] for k, v in world.user_features(users).items()}
    item_rows = world.item_features(items)
    item_ids = [str(i) for i in item_rows[ITEM_KEY]]
    features = {
        "context": {k: str(v) for k, v in user.items() if k != USER_KEY},
        "items": {
            item_ids[j]: {k: (float(v[j]) if k == "price" else str(v[j]))
                          for k, v in item_rows.items() if k != ITEM_KEY}
            for j in range(len(item_ids))
        },
    }
    path = os.path.join(out_dir, f"score_request_domain{domain}.json")
    with open(path, "w") as f:
        json.dump(features, f)
    return str(user[USER_KEY]), item_ids, path


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _pipeline_run(model: str, flags: list, outcome_path: str) -> dict:
    _crocodile("pipeline", "run", "--model", model, *flags, "--outcome-json", outcome_path)
    return _read_json(outcome_path)


def _blessing_lines(outcome: dict) -> list:
    """The blessing gate's per-slice lines and reasons, read by key from the run's outcome JSON.

    ``decision`` (the gate's blessing.json: ``overall``, ``domains``, ``reasons``) is shown
    with crocodile.pipeline.model_compare.summary_lines (and gauc_lines); without it, whatever is present
    of ``auc_by_slice``, ``validation_failures`` and ``reasons`` (lists of strings).
    """
    decision = outcome.get("decision") or {}
    lines, gauc = [], []
    if isinstance(decision.get("domains"), dict) and "overall" in decision:
        from crocodile.pipeline.model_compare import gauc_lines, summary_lines

        try:
            lines += summary_lines(decision)
            gauc = gauc_lines(decision)
        except (KeyError, TypeError, ValueError):
            lines, gauc = [], []
    if not lines:
        lines += [str(line) for line in outcome.get("auc_by_slice") or []]
    lines += [f"failed check: {line}" for line in outcome.get("validation_failures") or []]
    lines += [f"reason: {line}" for line in decision.get("reasons") or outcome.get("reasons") or []]
    return lines + gauc


def _ctr_text(ctr: dict) -> str:
    text = f"CTR lift {ctr['rel_lift']:+.2%}"
    interval = ctr.get("rel_ci") or [None, None]
    if None not in interval:
        text += f" [{interval[0]:+.2%}, {interval[1]:+.2%}]"
    return text


def _ab_lines(report: dict) -> list:
    """Verdict and CTR lift of an A/B report.json, overall and per domain with the true lift beside
    the estimate, so the gate's per-domain lines above can be checked against the truth. Read by
    key (``verdict``, ``overall.metrics.ctr``, ``oracle_overall_ctr_lift``, ``domains[].scope`` and
    ``.metrics.ctr.oracle_rel_lift``); missing keys are left out."""
    lines = []
    if report.get("verdict") is not None:
        lines.append(f"verdict: {report['verdict']}")
    ctr = ((report.get("overall") or {}).get("metrics") or {}).get("ctr") or {}
    if ctr.get("rel_lift") is not None:
        lines.append(_ctr_text(ctr))
    oracle = report.get("oracle_overall_ctr_lift")
    if oracle is not None:
        lines.append(f"true (oracle) CTR lift {oracle:+.2%}")
    for domain in report.get("domains") or []:
        ctr = ((domain or {}).get("metrics") or {}).get("ctr") or {}
        if ctr.get("rel_lift") is None:
            continue
        text = f"  {domain.get('scope', '?'):<10} {_ctr_text(ctr)}"
        if ctr.get("oracle_rel_lift") is not None:
            text += f"  true {ctr['oracle_rel_lift']:+.2%}"
        lines.append(text)
    return lines


def run(args) -> int:
    from crocodile import console
    from crocodile.errors import UserError

    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"--out {out} is not empty; the demo never overwrites earlier results "
                        "(pass another --out or remove it)")
    offline_impressions = args.offline_impressions or (
        FULL_OFFLINE_AB_IMPRESSIONS if args.full else OFFLINE_AB_IMPRESSIONS)
    pre_period = args.pre_period_impressions
    if pre_period is None:
        pre_period = FULL_OFFLINE_AB_PRE_PERIOD_IMPRESSIONS if args.full else OFFLINE_AB_PRE_PERIOD_IMPRESSIONS
    paths = {name: os.path.join(out, name) for name in
             ("data", "pipeline_root", "serving", "requests", "abtest_live", "abtest_offline", "logs")}
    for name, path in paths.items():
        if name != "data":  # `data generate` creates its own, new folder
            os.makedirs(path, exist_ok=True)
    library_log = console.move_log(os.path.join(paths["logs"], LIBRARY_LOG))
    steps = _Steps()

    steps.start(1, f"world logs (preset {args.preset})")
    data = paths["data"]
    generate = ["data", "generate", "--out", data, "--preset", args.preset, "--seed", DEMO_SEED,
                "--format", LOG_FORMAT, "--shards", LOG_SHARDS]
    if args.impressions:
        generate += ["--impressions", args.impressions]
    if args.users:
        generate += ["--users", args.users]
    _crocodile(*generate)
    _crocodile("data", "describe", data)

    steps.start(2, f"TFX pipeline: {STABLE_MODEL} (the first push becomes stable)")
    pipeline_flags = ["--data", data, "--pipeline-root", paths["pipeline_root"],
                      "--serving-dir", paths["serving"]]
    stable_outcome = _pipeline_run(STABLE_MODEL, pipeline_flags, os.path.join(paths["logs"], "pipeline_stable.json"))
    versions = _pushed_versions(paths["serving"])
    if not versions:
        raise RuntimeError("the first pipeline run pushed no model")
    stable = versions[-1]

    steps.start(3, f"TFX pipeline: {CANARY_MODEL} (canary if blessed against {STABLE_MODEL})")
    candidate_outcome = _pipeline_run(CANARY_MODEL, pipeline_flags,
                                      os.path.join(paths["logs"], "pipeline_candidate.json"))
    versions = _pushed_versions(paths["serving"])
    canary = versions[-1]
    blessed = canary != stable
    if not blessed:
        print(f"{CANARY_MODEL} was not blessed against {STABLE_MODEL}: the live canary routes only blessed "
              "versions, so both labels point at the stable version; the offline A/B below still "
              "simulates the candidate against stable.", flush=True)

    steps.start(4, f"serving: model server + canary router (stable={stable}, canary={canary})")
    from crocodile.serving.model_config import write_model_config
    from crocodile.simulation.world import World

    config_path = os.path.join(paths["serving"], "models.config")
    write_model_config(config_path, MODEL_NAME, os.path.join(paths["serving"], MODEL_NAME), stable, canary)
    import crocodile.serving

    # A 50/50 split of every domain's users, shipped with the package (serving/config/).
    policy = os.path.join(os.path.dirname(crocodile.serving.__file__), "config", AB_POLICY_FILE)
    # Labels in the start-up config need this flag in TF Serving too (labels are checked
    # before the first load); docker/Dockerfile.serving passes it the same way.
    server = _start(["model-server", "--port", MODEL_SERVER_PORT, "--model_config_file", config_path,
                     "--allow_version_labels_for_unavailable_models"],
                    os.path.join(paths["logs"], "model_server.log"))
    router = None
    base = os.path.join(paths["serving"], MODEL_NAME)
    try:
        _wait_ready(f"localhost:{MODEL_SERVER_PORT}", server)
        router = _start(["router", "--port", ROUTER_PORT, "--backend", f"localhost:{MODEL_SERVER_PORT}",
                         "--policy", policy, "--exposure-log", os.path.join(paths["logs"], "exposure.jsonl"),
                         "--metrics-port", ROUTER_METRICS_PORT],
                        os.path.join(paths["logs"], "router.log"))
        _wait_ready(f"localhost:{ROUTER_PORT}", router)
        world = World.load(os.path.join(data, "world"))
        for domain in range(world.num_domains):
            user, items, features = _score_request_json(world, domain, paths["requests"])
            _crocodile("score", "--target", f"localhost:{ROUTER_PORT}", "--domain", domain, "--user", user,
                       "--items", ",".join(items), "--features", "@" + features)

        steps.start(5, f"live A/B through the router: {LIVE_AB_USERS:,} requests (blessed versions only)")
        _crocodile("abtest", "live", "--target", f"localhost:{ROUTER_PORT}", "--world", data,
                   "--users", LIVE_AB_USERS, "--policy", policy, "--report", paths["abtest_live"],
                   "--stable", os.path.join(base, str(stable)), "--canary", os.path.join(base, str(canary)))
    finally:
        for process in (router, server):
            if process is not None:
                _stop(process)
    print("model server and router stopped", flush=True)

    # The candidate as trained, pushed or not: the A/B's simulated truth can then be set
    # beside the pipeline's decision.
    candidate_dir = (os.path.join(base, str(canary)) if blessed
                     else candidate_outcome.get("trained_model_dir"))
    if not candidate_dir or not os.path.exists(os.path.join(candidate_dir, "saved_model.pb")):
        raise RuntimeError(f"the {CANARY_MODEL} run recorded no trained SavedModel ({candidate_dir})")
    steps.start(6, f"offline A/B: {CANARY_MODEL} (pipeline decision: {'blessed' if blessed else 'NOT blessed'}) "
                   f"vs stable {STABLE_MODEL}, {offline_impressions:,} impressions")
    _crocodile("abtest", "offline", "--stable", os.path.join(base, str(stable)),
               "--canary", candidate_dir, "--policy", policy, "--world", data,
               "--impressions", offline_impressions, "--cuped-impressions", pre_period,
               "--candidate-status", f"{'blessed' if blessed else 'NOT blessed'} by the pipeline",
               "--report", paths["abtest_offline"])
    steps.finish()

    summary = {
        "stable": {"model": STABLE_MODEL, "version": stable, "outcome": stable_outcome},
        "candidate": {"model": CANARY_MODEL, "blessed": blessed, "canary_version": canary if blessed else None,
                      "saved_model": candidate_dir, "outcome": candidate_outcome},
        "offline_ab": _read_json(os.path.join(paths["abtest_offline"], "report.json")),
        "live_ab": _read_json(os.path.join(paths["abtest_live"], "report.json")),
        "step_seconds": steps.seconds,
        "total_seconds": round(time.time() - steps.started, 1),
        "library_log": library_log,
    }
    with open(os.path.join(out, SUMMARY_FILE), "w") as f:
        json.dump({k: v for k, v in summary.items() if k not in ("offline_ab", "live_ab")}, f, indent=2,
                  default=str)
    _print_summary(summary, out, paths, base)
    return 0


def _print_summary(summary: dict, out: str, paths: dict, base: str) -> None:
    stable, candidate = summary["stable"], summary["candidate"]
    print(f"\n=== Summary (demo finished in {summary['total_seconds'] / 60:.1f} min)")
    print(f"pushed: {STABLE_MODEL} as version {stable['version']} = stable (first run: only the absolute "
          f"checks apply)")
    if candidate["blessed"]:
        print(f"pushed: {CANARY_MODEL} as version {candidate['canary_version']} = canary (blessed against stable)")
    else:
        print(f"not pushed: {CANARY_MODEL} (not blessed against stable); the live A/B was an A/A test")
    print(f"blessing of {CANARY_MODEL}, per domain:")
    for line in _blessing_lines(candidate["outcome"]) or ["(no per-domain record found)"]:
        print(f"  {line}")
    print(f"offline A/B, {CANARY_MODEL} as trained vs stable (pipeline decision: "
          f"{'blessed' if candidate['blessed'] else 'not blessed'}; the simulation is the truth to judge it by):")
    for line in _ab_lines(summary["offline_ab"]) or ["(no verdict in the report)"]:
        print(f"  {line}")
    print("outputs:")
    print(f"  offline A/B report:  {os.path.join(paths['abtest_offline'], 'report.md')}")
    for plot in sorted(glob.glob(os.path.join(paths["abtest_offline"], "*.png"))):
        print(f"  offline A/B plot:    {plot}")
    print(f"  live A/B report:     {os.path.join(paths['abtest_live'], 'report.md')}")
    print(f"  pushed SavedModels:  {base}")
    print(f"  pipeline artifacts:  {paths['pipeline_root']} (ML Metadata: metadata.sqlite)")
    print(f"  logs and world:      {paths['data']}")
    print(f"  serving logs:        {paths['logs']}")
    if summary["library_log"]:
        print(f"  library logs:        {summary['library_log']} (--verbose shows them instead)")
    print("step wall times:")
    for name, seconds in summary["step_seconds"].items():
        print(f"  {seconds / 60:5.1f} min  {name}")
    print(f"  (also in {os.path.join(out, SUMMARY_FILE)})", flush=True)
