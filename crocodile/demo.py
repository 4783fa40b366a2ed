"""`crocodile demo`: the main job end to end on embedded defaults.

Every step is the same `crocodile` command a user would type, run as a child process,
so the demo exercises the real entry points:

1. generate world logs;
2. run the TFX pipeline with `mmoe` (first push = `stable`), then with `crocodile`
   (evaluated against it, pushed only if blessed = `canary`);
3. start the embedded model server and the canary router on the pushed versions and
   score one request per domain with `crocodile score`;
4. a live A/B through the router (a few thousand requests), then shut both down;
5. an offline A/B sized to detect a 1% CTR lift, with the report.
"""
import glob
import os
import signal
import subprocess
import sys
import time

# Embedded defaults (sized for a 2-core machine).
DEMO_SEED = 7
DEMO_IMPRESSIONS = 300_000
DEMO_TRAIN_STEPS = 600
STABLE_MODEL = "mmoe"
CANARY_MODEL = "crocodile"
MODEL_NAME = "crocodile"
MODEL_SERVER_PORT = 8500
ROUTER_PORT = 8600
ROUTER_METRICS_PORT = 8601
DEMO_USERS = 200_000
LIVE_AB_USERS = 3_000
# Sized for a 1% CTR lift (alpha 0.05, power 0.8): with user-level randomisation the
# minimum detectable effect shrinks with users as well as impressions. At ~4.5% CTR,
# 20k users x 2M impressions gave +-3.0% with CUPED, so 1% needs ~10x both, with a
# pre-period for CUPED. The report prints the MDE the run actually reached.
OFFLINE_AB_IMPRESSIONS = 20_000_000
OFFLINE_AB_PRE_PERIOD_IMPRESSIONS = 10_000_000
AB_POLICY_FILE = "even_split_policy.yaml"
SERVER_START_TIMEOUT_S = 180


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the main job end to end on embedded defaults")
    parser.add_argument("--out", default="demo_out", help="folder for every output of the demo")
    parser.add_argument("--impressions", type=int, default=DEMO_IMPRESSIONS, help="world log size")
    parser.add_argument("--users", type=int, default=DEMO_USERS, help="users in the world")
    parser.add_argument("--offline-impressions", type=int, default=OFFLINE_AB_IMPRESSIONS)
    parser.add_argument("--pre-period-impressions", type=int, default=OFFLINE_AB_PRE_PERIOD_IMPRESSIONS,
                        help="pre-period traffic for CUPED in the offline A/B (0 turns CUPED off)")
    parser.set_defaults(handler=run)


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _command(args, note: str = "") -> list:
    """The child-process command for `crocodile ARGS`, echoed as a user would type it."""
    print("$ crocodile " + " ".join(map(str, args)) + note, flush=True)
    return [sys.executable, "-m", "crocodile", *map(str, args)]


def _crocodile(*args: str) -> None:
    subprocess.run(_command(args), check=True)


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


def run(args) -> int:
    from crocodile.errors import UserError

    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"--out {out} is not empty; the demo never overwrites earlier results "
                        "(pass another --out or remove it)")
    paths = {name: os.path.join(out, name) for name in
             ("data", "pipeline_root", "serving", "requests", "abtest_live", "abtest_offline", "logs")}
    for name, path in paths.items():
        if name != "data":  # `data generate` creates its own, new folder
            os.makedirs(path, exist_ok=True)
    started = time.time()

    _step(f"1/5 world logs: {args.impressions:,} impressions")
    data = paths["data"]
    _crocodile("data", "generate", "--out", data, "--impressions", args.impressions,
               "--users", args.users, "--seed", DEMO_SEED)
    _crocodile("data", "describe", data)

    _step(f"2/5 TFX pipeline: {STABLE_MODEL} (stable), then {CANARY_MODEL} (canary if blessed)")
    pipeline_flags = ["--data", data, "--pipeline-root", paths["pipeline_root"],
                      "--serving-dir", paths["serving"], "--train-steps", DEMO_TRAIN_STEPS]
    _crocodile("pipeline", "run", "--model", STABLE_MODEL, *pipeline_flags)
    versions = _pushed_versions(paths["serving"])
    if not versions:
        raise RuntimeError("the first pipeline run pushed no model")
    stable = versions[-1]
    _crocodile("pipeline", "run", "--model", CANARY_MODEL, *pipeline_flags)
    versions = _pushed_versions(paths["serving"])
    canary = versions[-1]
    if canary == stable:
        print(f"{CANARY_MODEL} was not blessed against {STABLE_MODEL}: nothing new to canary, "
              "so both labels point at the stable version (the A/B below is an A/A test).")

    _step(f"3/5 serving: model server + canary router (stable={stable}, canary={canary})")
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

        _step(f"4/5 live A/B through the router: {LIVE_AB_USERS:,} requests")
        base = os.path.join(paths["serving"], MODEL_NAME)
        _crocodile("abtest", "live", "--target", f"localhost:{ROUTER_PORT}", "--world", data,
                   "--users", LIVE_AB_USERS, "--policy", policy, "--report", paths["abtest_live"],
                   "--stable", os.path.join(base, str(stable)), "--canary", os.path.join(base, str(canary)))
    finally:
        for process in (router, server):
            if process is not None:
                _stop(process)
    print("model server and router stopped", flush=True)

    _step(f"5/5 offline A/B: {args.offline_impressions:,} impressions")
    base = os.path.join(paths["serving"], MODEL_NAME)
    _crocodile("abtest", "offline", "--stable", os.path.join(base, str(stable)),
               "--canary", os.path.join(base, str(canary)), "--policy", policy, "--world", data,
               "--impressions", args.offline_impressions, "--cuped-impressions", args.pre_period_impressions,
               "--report", paths["abtest_offline"])

    print(f"\nDemo finished in {(time.time() - started) / 60:.1f} min. Outputs under {out}:")
    print(f"  logs and world:       {data}")
    print(f"  pipeline artifacts:   {paths['pipeline_root']} (ML Metadata: metadata.sqlite)")
    print(f"  pushed SavedModels:   {base} (stable={stable}, canary={canary})")
    print(f"  serving logs:         {paths['logs']}")
    print(f"  live A/B report:      {os.path.join(paths['abtest_live'], 'report.md')}")
    print(f"  offline A/B report:   {os.path.join(paths['abtest_offline'], 'report.md')}")
    return 0
