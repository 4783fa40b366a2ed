"""Serving latency and throughput: directly against the model server vs through the canary router.

Prints JSON: p50 / p99 latency (one client, sequential requests) and throughput (concurrent
clients, fixed duration) for 1 and 100 candidates per Regress request (ExampleListWithContext),
direct and via the router, measured in one run; the router's overhead as paired ratios, next to a bare
byte-forwarding hop (grpc_hop_floor.py: gRPC's sync server, and grpc.aio).

Method (DESIGN section 9): the model server and the router run as separate `crocodile` processes
(as deployed); the four variants (direct/router x 1/100 candidates) are interleaved within each
round, after a warm-up round, over >= 5 rounds; reported numbers are medians over rounds, and the
overhead is the median (and min/max) of the per-round router/direct ratios and router-minus-direct
differences (ms), with the router's goal (p50 overhead <= 0.5 ms, p99 overhead <= 1 ms, throughput
ratio >= 0.9) checked on those medians. The policy sends every
user to stable, so both paths run the same version. During each throughput sample the CPU time
each process on the path uses per request is read from /proc (``throughput_cpu_ms_per_request``):
client, router and server share the host's cores, so a hop's CPU per request is what it takes
from the others' throughput.

  .venv/bin/python benchmarks/serving_latency.py [--model-base DIR] [--rounds 5] [--baseline-source DIR]

--model-base: a folder with <version>/saved_model.pb (e.g. a Pusher's <serving_dir>/crocodile);
by default two small real SavedModels with the production signatures are written to a temp folder.
--client preserialized: requests serialized once before the rounds (the default, scoring, has
ScoringClient build each one, as a caller would; at 100 candidates that is ~2.3 ms of client CPU).
--paths direct,router,...: measure only these (fewer paths, more rounds in the same time).
The router with its compiled data plane (``router_native``: crocodile router --data-plane native) is
measured whenever it is built (make native-router) or given with --data-plane-binary.
--native-hop BINARY: benchmarks/native_hop.cc built (see its header); a compiled byte-forwarding hop is
then measured as a further path (``native_hop``), the floor of any compiled proxy on this host.
--baseline-source: a checkout of older code (``git worktree add /tmp/base <commit>``); its router runs
in front of the same model server as a fourth path (``baseline_router``), interleaved with the others,
with paired current-minus-baseline router differences.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid

import numpy as np

import crocodile  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from crocodile.benchmarks.local_processes import (checkout_commit, cpu_seconds, crocodile_command, free_port,
                                                  launch, median_min_max, progress, stop)
from crocodile.serving.routing_keys import REQUEST_ID_HEADER

CANDIDATE_COUNTS = (1, 100)
PATHS = ("direct", "router", "router_uds", "hop_floor", "hop_floor_aio", "hop_floor_uds")
BASELINE_PATH = "baseline_router"
NATIVE_PATH = "native_hop"
NATIVE_ROUTER_PATH = "router_native"  # crocodile router --data-plane native, when it is built
log = progress("serving_latency")


def request_data(n):
    context = {"user_segment": "seg1", "user_region": "r1"}
    items = [{"item_id": f"i{k:05d}", "item_category": f"c{k % 7}", "price": 1.0 + k} for k in range(n)]
    return context, items


class PreSerializedClient:
    """``--client preserialized``: sends requests built and serialized once before the rounds (one
    per domain, size and label; the user is fixed per domain), so the client's request building
    (2.1-2.4 ms of Python CPU per 100-candidate request with ScoringClient) is neither timed nor
    competing with the hops for the host's cores. Same ``regress`` call as ScoringClient, with the
    same metadata: a new ``x-request-id`` per request, which every path then carries to the model
    server (without it, direct calls reached the Python stand-in with one header fewer than routed
    ones, and its gRPC server spent ~0.05 ms more CPU per request on a routed call's header)."""

    def __init__(self, target, bodies):
        import grpc
        self._channel = grpc.insecure_channel(target)
        self._call = self._channel.unary_unary("/tensorflow.serving.PredictionService/Regress")
        self._bodies = bodies

    @staticmethod
    def build_bodies():
        from crocodile.serving.client import ScoringClient
        with ScoringClient("localhost:1") as builder:  # only builds requests: its channel never connects
            data = {n: request_data(n) for n in CANDIDATE_COUNTS}  # (context, items)
            return {(domain, n, label): builder.build_request(domain, f"user{domain}", data[n][1], data[n][0],
                                                              label).SerializeToString()
                    for domain in range(5) for n in CANDIDATE_COUNTS for label in (None, "stable")}

    def regress(self, domain_id, user_id, candidates, context=None, label=None):
        return self._call(self._bodies[(domain_id, len(candidates), label)], timeout=30,
                          metadata=((REQUEST_ID_HEADER, uuid.uuid4().hex),))

    def close(self):
        self._channel.close()


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
    parser.add_argument("--baseline-source", help="checkout of older code whose router is measured alongside")
    parser.add_argument("--native-hop", help="built benchmarks/native_hop.cc, measured as a further path")
    parser.add_argument("--client", choices=("scoring", "preserialized"), default="scoring",
                        help="scoring: ScoringClient builds each request (as a caller would); preserialized: "
                             "requests serialized once, before the rounds (see PreSerializedClient)")
    parser.add_argument("--paths", help=f"comma-separated subset of {','.join(PATHS)} (default: all; direct "
                                        f"is always measured)")
    parser.add_argument("--exposure-log", action="store_true",
                        help="every router writes an exposure log, as deployed for an A/B (default: none)")
    parser.add_argument("--data-plane-binary", help="the router's compiled data plane (default: the one `make "
                                                    "native-router` builds); its router is measured when it exists")
    args = parser.parse_args()
    chosen = PATHS if not args.paths else tuple(dict.fromkeys(["direct"] + args.paths.split(",")))
    unknown = sorted(set(chosen) - set(PATHS))
    if unknown:
        parser.error(f"--paths: unknown {', '.join(unknown)} (choose from {', '.join(PATHS)})")
    if args.native_hop and not os.access(args.native_hop, os.X_OK):  # before any model is written
        parser.error(f"--native-hop {args.native_hop}: not an executable (build benchmarks/native_hop.cc)")
    load_at_start = os.getloadavg()

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

    socket_path = os.path.join(work, "model_server.sock")
    log("starting model server and router processes")
    from crocodile.errors import UserError
    from crocodile.serving.native_router import find_binary
    try:
        data_plane = find_binary(args.data_plane_binary)
    except UserError as error:
        if args.data_plane_binary:
            parser.error(str(error))
        log(f"native router not measured: {error}")
        data_plane = None
    paths = (chosen + ((BASELINE_PATH,) if args.baseline_source else ()) + ((NATIVE_PATH,) if args.native_hop else ())
             + ((NATIVE_ROUTER_PATH,) if data_plane else ()))
    processes, clients = {}, {}
    try:
        server, server_port = launch(crocodile_command(
            ["model-server", "--port", "0", "--model_config_file", config,
             "--allow_version_labels_for_unavailable_models", "--grpc_socket_path", socket_path]),
            os.path.join(work, "server.log"))
        processes["server"] = server
        backend = f"127.0.0.1:{server_port}"
        targets = {"direct": backend}
        unix_backend = f"unix:{socket_path}"
        routers = {path: (None, backend if path == "router" else unix_backend, ["--data-plane", "python"])
                   for path in ("router", "router_uds") if path in paths}
        if args.baseline_source:
            routers[BASELINE_PATH] = (args.baseline_source, backend, [])
        if data_plane:
            routers[NATIVE_ROUTER_PATH] = (None, backend, ["--data-plane", "native", "--data-plane-binary", data_plane])
        for path, (source, to, flags) in routers.items():
            if args.exposure_log:
                flags = flags + ["--exposure-log", os.path.join(work, f"{path}.exposure.jsonl")]
            router, port = launch(crocodile_command(["router", "--port", "0", "--backend", to, "--policy", policy,
                                                     *flags], source), os.path.join(work, f"{path}.log"))
            processes[path] = router
            targets[path] = f"127.0.0.1:{port}"
        hop_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_hop_floor.py")
        for path, to, flags in (("hop_floor", backend, []), ("hop_floor_aio", backend, ["--aio"]),
                                ("hop_floor_uds", unix_backend, [])):
            if path not in paths:
                continue
            floor, floor_port = launch([sys.executable, hop_script, str(free_port()), to, *flags],
                                       os.path.join(work, f"{path}.log"))
            processes[path] = floor
            targets[path] = f"127.0.0.1:{floor_port}"
        if args.native_hop:
            native, native_port = launch([args.native_hop, str(free_port()), backend],
                                         os.path.join(work, f"{NATIVE_PATH}.log"))
            processes[NATIVE_PATH] = native
            targets[NATIVE_PATH] = f"127.0.0.1:{native_port}"
        # direct and the bare hops: ask for the label the router would pick.
        labels = {path: None if path in routers else "stable" for path in paths}
        if args.client == "preserialized":
            bodies = PreSerializedClient.build_bodies()
            make_client = lambda target: PreSerializedClient(target, bodies)  # noqa: E731
        else:
            make_client = ScoringClient
        clients = {path: make_client(targets[path]) for path in paths}
        samples = measure(paths, targets, clients, labels, args, processes, make_client)
    finally:
        for client in clients.values():
            client.close()
        stop(list(processes.values())[::-1])

    results = {path: {} for path in paths}
    for (path, n), values in samples.items():
        results[path][f"{n}_candidates"] = {
            "p50_ms": round(float(np.median(values["p50_ms"])), 3),
            "p99_ms": round(float(np.median(values["p99_ms"])), 3),
            "throughput_requests_per_s": round(float(np.median(values["throughput_rps"])), 1),
            "throughput_candidates_per_s": round(float(np.median(values["throughput_rps"])) * n, 1),
            "throughput_cpu_ms_per_request": {
                name: round(float(np.median([cpu[name] for cpu in values["cpu_ms_per_request"]])), 3)
                for name in values["cpu_ms_per_request"][0]},
        }
    hops = tuple((path, name) for path, name in (
        ("router", "router"), ("router_uds", "router_to_unix_socket"), ("hop_floor", "bare_hop"),
        ("hop_floor_aio", "bare_aio_hop"), ("hop_floor_uds", "bare_hop_to_unix_socket"),
        (NATIVE_PATH, "native_hop"), (NATIVE_ROUTER_PATH, "native_router")) if path in paths)
    overhead = {}
    for n in CANDIDATE_COUNTS:
        direct = samples[("direct", n)]
        entry = {}
        for path, name in hops:
            for metric in ("p50_ms", "p99_ms", "throughput_rps"):
                entry[f"{metric}_ratio_{name}_over_direct"] = median_min_max(
                    np.array(samples[(path, n)][metric]) / np.array(direct[metric]))
            for metric in ("p50_ms", "p99_ms"):
                entry[f"{metric}_overhead_{name}_minus_direct"] = median_min_max(
                    np.array(samples[(path, n)][metric]) - np.array(direct[metric]))
        if "router" in paths and "hop_floor" in paths:
            for metric in ("p50_ms", "p99_ms"):  # what routing costs above any Python hop
                entry[f"{metric}_router_minus_bare_hop"] = median_min_max(
                    np.array(samples[("router", n)][metric]) - np.array(samples[("hop_floor", n)][metric]))
        if args.baseline_source:
            for metric in ("p50_ms", "p99_ms"):
                entry[f"{metric}_router_minus_baseline_router"] = median_min_max(
                    np.array(samples[("router", n)][metric]) - np.array(samples[(BASELINE_PATH, n)][metric]))
            entry["throughput_rps_ratio_router_over_baseline_router"] = median_min_max(
                np.array(samples[("router", n)]["throughput_rps"]) / np.array(samples[(BASELINE_PATH, n)]["throughput_rps"]))
            entry["throughput_rps_ratio_baseline_router_over_direct"] = median_min_max(
                np.array(samples[(BASELINE_PATH, n)]["throughput_rps"]) / np.array(direct["throughput_rps"]))
        for path, name in hops:  # the goal, for each router measured
            if path in ("router", NATIVE_ROUTER_PATH):
                entry["goal_met" if path == "router" else f"goal_met_{name}"] = {
                    "p50_overhead_le_0.5_ms": bool(entry[f"p50_ms_overhead_{name}_minus_direct"]["median"] <= 0.5),
                    "p99_overhead_le_1_ms": bool(entry[f"p99_ms_overhead_{name}_minus_direct"]["median"] <= 1.0),
                    "throughput_ratio_ge_0.9": bool(
                        entry[f"throughput_rps_ratio_{name}_over_direct"]["median"] >= 0.9)}
        overhead[f"{n}_candidates"] = entry
    report = {
        "benchmark": "serving_latency",
        "api": "PredictionService.Regress, ExampleListWithContext, signature 'regress'",
        "model": "given --model-base" if args.model_base else
                 "small real SavedModel (crocodile.serving.toy_ranker: parse_example of WORLD_FEATURES + hashed linear)",
        "model_base": os.path.abspath(model_base),
        "setup": {"rounds": args.rounds, "warmup_rounds": 1, "latency_requests_per_round": args.requests,
                  "throughput_clients": args.clients, "throughput_seconds_per_round": args.seconds,
                  "server": "crocodile model-server (embedded TF Serving stand-in), batching off, CPU",
                  "router": "crocodile router, policy: all users on stable" + (
                      ", writing an exposure log" if args.exposure_log else ", no exposure log"),
                  "cpu_count": os.cpu_count(),
                  "hop_floor": "benchmarks/grpc_hop_floor.py: a byte-forwarding proxy without routing (the cost "
                               "of any Python gRPC hop on this host); hop_floor_aio: the same on grpc.aio; "
                               "*_uds: to the model server's UNIX socket (--grpc_socket_path); native_hop "
                               "(--native-hop): benchmarks/native_hop.cc, the same hop compiled (one event thread); "
                               "router_native: crocodile router --data-plane native (its CPU: data_plane)",
                  "client": ("crocodile.serving.client.ScoringClient (builds and serializes each request)"
                             if args.client == "scoring" else "requests serialized once before the rounds, sent as "
                             "bytes (--client preserialized)") + "; throughput: that many client threads in this "
                             "process",
                  "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
                  "processes": "server, router and client are separate processes on the same host; "
                               "the host's cores are shared with other work, so absolute numbers are noisy"},
        "results": results,
        "router_overhead": overhead,
        "gpu": {"measured": False,
                "reason": "no GPU machine is lent to this task (device status: can_start_another=false); "
                          "GPU numbers need real TF Serving on GPU (docker/Dockerfile.serving)"},
    }
    if args.baseline_source:
        report["baseline"] = {"source": os.path.abspath(args.baseline_source),
                              "commit": checkout_commit(args.baseline_source),
                              "current_commit": checkout_commit(os.path.dirname(os.path.abspath(__file__)))}
    print(json.dumps(report, indent=2))


def child_pid(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def measure(paths, targets, clients, labels, args, processes, make_client):
    """{(path, n): {"p50_ms": [...], "p99_ms": [...], "throughput_rps": [...], "cpu_ms_per_request": [...]}},
    one number per round; CPU: {process: ms} used per request during the throughput sample by each
    process on the path and by this client process."""
    variants = [(path, n) for n in CANDIDATE_COUNTS for path in paths]
    samples = {v: {"p50_ms": [], "p99_ms": [], "throughput_rps": [], "cpu_ms_per_request": []} for v in variants}
    for round_index in range(args.rounds + 1):  # round 0 is the warm-up, discarded
        order = variants if round_index % 2 == 0 else variants[::-1]
        for path, n in order:
            p50, p99 = latency_ms(clients[path], n, args.requests if round_index else 20, labels[path])
            on_path = {name: processes[name].pid for name in (path, "server") if name in processes}
            if path == NATIVE_ROUTER_PATH:  # the data plane is the router's child process
                on_path["data_plane"] = child_pid(processes[path].pid)
            before = {name: cpu_seconds(pid) for name, pid in on_path.items()}
            client_before = sum(os.times()[:2])
            seconds = args.seconds if round_index else 0.5
            rps = throughput_rps(lambda p=path: make_client(targets[p]), n, args.clients, seconds, labels[path])
            requests = max(rps * seconds, 1.0)
            cpu = {name: (cpu_seconds(pid) - before[name]) * 1e3 / requests
                   for name, pid in on_path.items() if before[name] is not None and cpu_seconds(pid) is not None}
            cpu["client"] = (sum(os.times()[:2]) - client_before) * 1e3 / requests
            if round_index:
                samples[(path, n)]["p50_ms"].append(p50)
                samples[(path, n)]["p99_ms"].append(p99)
                samples[(path, n)]["throughput_rps"].append(rps)
                samples[(path, n)]["cpu_ms_per_request"].append(cpu)
        log(f"round {round_index}/{args.rounds} done" + (" (warm-up)" if round_index == 0 else ""))
    return samples


if __name__ == "__main__":
    main()
