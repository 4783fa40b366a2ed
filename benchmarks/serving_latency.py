"""Serving latency and throughput: directly against the model server vs through the canary router.

Prints JSON: p50 / p99 latency (one client, sequential requests) and throughput (concurrent
clients, fixed duration) for 1 and 100 candidates per Regress request (ExampleListWithContext),
direct and via the router, measured in one run; the router's overhead as paired ratios, next to a bare byte-forwarding hop (grpc_hop_floor.py).

Method (DESIGN section 9): the model server and the router run as separate `crocodile` processes
(as deployed); the four variants (direct/router x 1/100 candidates) are interleaved within each
round, after a warm-up round, over >= 5 rounds; reported numbers are medians over rounds, and the
overhead is the median (and min/max) of the per-round router/direct ratios and router-minus-direct
differences (ms), with the router's goal (p50 overhead <= 0.5 ms, p99 overhead <= 1 ms, throughput
ratio >= 0.9) checked on those medians. The policy sends every
user to stable, so both paths run the same version.

  .venv/bin/python benchmarks/serving_latency.py [--model-base DIR] [--rounds 5]

--model-base: a folder with <version>/saved_model.pb (e.g. a Pusher's <serving_dir>/crocodile);
by default two small real SavedModels with the production signatures are written to a temp folder.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import crocodile  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

CANDIDATE_COUNTS = (1, 100)
PATHS = ("direct", "router", "hop_floor")


def log(message):
    print(f"[serving_latency] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args, log_path):
    process = subprocess.Popen([sys.executable, "-m", "crocodile"] + args, stdout=open(log_path, "w"),
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        match = re.search(r"listening on port (\d+)", open(log_path).read())
        if match:
            return process, int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"{args[0]} did not start: {open(log_path).read()[-2000:]}")


def request_data(n):
    context = {"user_segment": "seg1", "user_region": "r1"}
    items = [{"item_id": f"i{k:05d}", "item_category": f"c{k % 7}", "price": 1.0 + k} for k in range(n)]
    return context, items


def latency_ms(client, n, requests, label):
    context, items = request_data(n)
    samples = []
    for k in range(requests):
        start = time.perf_counter()
        client.regress(k % 5, f"user{k}", items, context=context, label=label)
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def throughput_rps(make_client, n, clients, seconds, label):
    context, items = request_data(n)
    counts = [0] * clients
    deadline = time.monotonic() + seconds

    def loop(index):
        client = make_client()
        k = 0
        while time.monotonic() < deadline:
            client.regress(k % 5, f"user{index}-{k}", items, context=context, label=label)
            counts[index] += 1
            k += 1
        client.close()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-base", help="folder with <version>/saved_model.pb (default: small real models)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency sample")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of one throughput sample")
    args = parser.parse_args()

    from crocodile.serving.client import ScoringClient
    from crocodile.serving.model_config import write_model_config
    from crocodile.serving.servable import list_versions_on_disk

    work = tempfile.mkdtemp(prefix="serving_latency_")
    model_base = args.model_base
    if model_base is None:
        from crocodile.serving.toy_ranker import save_toy_ranker
        model_base = os.path.join(work, "crocodile")
        for version in (1, 2):
            save_toy_ranker(os.path.join(model_base, str(version)), seed=version)
    versions = list_versions_on_disk(model_base)
    config = os.path.join(work, "model_config.pbtxt")
    write_model_config(config, "crocodile", os.path.abspath(model_base), versions[0], versions[-1])
    policy = os.path.join(work, "policy.yaml")
    with open(policy, "w") as f:
        f.write("experiment: bench\nsalt: s\ndefault_canary_share: 0.0\n")  # everyone on stable

    log("starting model server and router processes")
    server_port = free_port()
    server, _ = launch(["model-server", "--port", str(server_port), "--model_config_file", config,
                        "--allow_version_labels_for_unavailable_models"], os.path.join(work, "server.log"))
    router, router_port = launch(["router", "--port", "0", "--backend", f"127.0.0.1:{server_port}",
                                  "--policy", policy], os.path.join(work, "router.log"))
    floor_port = free_port()
    floor = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                           "grpc_hop_floor.py"), str(floor_port),
                              f"127.0.0.1:{server_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(2.0)
    targets = {"direct": f"127.0.0.1:{server_port}", "router": f"127.0.0.1:{router_port}",
               "hop_floor": f"127.0.0.1:{floor_port}"}
    # direct and the bare hop: ask for the label the router would pick.
    labels = {"direct": "stable", "router": None, "hop_floor": "stable"}
    clients = {path: ScoringClient(target) for path, target in targets.items()}
    variants = [(path, n) for n in CANDIDATE_COUNTS for path in PATHS]
    samples = {v: {"p50_ms": [], "p99_ms": [], "throughput_rps": []} for v in variants}
    try:
        for round_index in range(args.rounds + 1):  # round 0 is the warm-up, discarded
            order = variants if round_index % 2 == 0 else variants[::-1]
            for path, n in order:
                p50, p99 = latency_ms(clients[path], n, args.requests if round_index else 20, labels[path])
                rps = throughput_rps(lambda p=path: ScoringClient(targets[p]), n, args.clients,
                                     args.seconds if round_index else 0.5, labels[path])
                if round_index:
                    samples[(path, n)]["p50_ms"].append(p50)
                    samples[(path, n)]["p99_ms"].append(p99)
                    samples[(path, n)]["throughput_rps"].append(rps)
            log(f"round {round_index}/{args.rounds} done" + (" (warm-up)" if round_index == 0 else ""))
    finally:
        for client in clients.values():
            client.close()
        for process in (router, floor, server):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)

    results = {path: {} for path in PATHS}
    for (path, n), values in samples.items():
        results[path][f"{n}_candidates"] = {
            "p50_ms": round(float(np.median(values["p50_ms"])), 3),
            "p99_ms": round(float(np.median(values["p99_ms"])), 3),
            "throughput_requests_per_s": round(float(np.median(values["throughput_rps"])), 1),
            "throughput_candidates_per_s": round(float(np.median(values["throughput_rps"])) * n, 1),
        }
    overhead = {}
    for n in CANDIDATE_COUNTS:
        direct, routed, floor_samples = samples[("direct", n)], samples[("router", n)], samples[("hop_floor", n)]
        entry = {}
        for metric in ("p50_ms", "p99_ms", "throughput_rps"):
            ratios = np.array(routed[metric]) / np.array(direct[metric])
            entry[f"{metric}_ratio_router_over_direct"] = {
                "median": round(float(np.median(ratios)), 3), "min": round(float(ratios.min()), 3),
                "max": round(float(ratios.max()), 3)}
        for metric in ("p50_ms", "p99_ms"):
            differences = np.array(routed[metric]) - np.array(direct[metric])
            entry[f"{metric}_overhead_router_minus_direct"] = {
                "median": round(float(np.median(differences)), 3), "min": round(float(differences.min()), 3),
                "max": round(float(differences.max()), 3)}
        for metric in ("p50_ms", "p99_ms"):
            differences = np.array(floor_samples[metric]) - np.array(direct[metric])
            entry[f"{metric}_overhead_bare_hop_minus_direct"] = {
                "median": round(float(np.median(differences)), 3), "min": round(float(differences.min()), 3),
                "max": round(float(differences.max()), 3)}
        entry["goal_met"] = {
            "p50_overhead_le_0.5_ms": bool(entry["p50_ms_overhead_router_minus_direct"]["median"] <= 0.5),
            "p99_overhead_le_1_ms": bool(entry["p99_ms_overhead_router_minus_direct"]["median"] <= 1.0),
            "throughput_ratio_ge_0.9": bool(entry["throughput_rps_ratio_router_over_direct"]["median"] >= 0.9)}
        overhead[f"{n}_candidates"] = entry
    print(json.dumps({
        "benchmark": "serving_latency",
        "api": "PredictionService.Regress, ExampleListWithContext, signature 'regress'",
        "model": "given --model-base" if args.model_base else
                 "small real SavedModel (crocodile.serving.toy_ranker: parse_example of WORLD_FEATURES + hashed linear)",
        "model_base": os.path.abspath(model_base),
        "setup": {"rounds": args.rounds, "warmup_rounds": 1, "latency_requests_per_round": args.requests,
                  "throughput_clients": args.clients, "throughput_seconds_per_round": args.seconds,
                  "server": "crocodile model-server (embedded TF Serving stand-in), batching off, CPU",
                  "router": "crocodile router, policy: all users on stable", "cpu_count": os.cpu_count(),
                  "hop_floor": "benchmarks/grpc_hop_floor.py: a byte-forwarding proxy without routing (the cost "
                               "of any Python gRPC hop on this host)",
                  "load_average_at_end": os.getloadavg(),
                  "processes": "server, router and client are separate processes on the same host; "
                               "the host's cores are shared with other work, so absolute numbers are noisy"},
        "results": results,
        "router_overhead": overhead,
        "gpu": {"measured": False,
                "reason": "no GPU machine is lent to this task (device status: can_start_another=false); "
                          "GPU numbers need real TF Serving on GPU (docker/Dockerfile.serving)"},
    }, indent=2))


if __name__ == "__main__":
    main()
