"""The router with its request path compiled: ``native/router_data_plane.cc`` in front of ``Router``.

The compiled data plane listens on the router's port and does the common request itself
(assignment, the ``version_label`` rewrite, the backend call, fallback, trailing metadata): a
Python gRPC hop costs more CPU per request than the router's whole budget on a small host
(serving/README.md). Everything else it passes unchanged to the Python ``Router`` (the control
plane), which listens on a private UNIX socket: requests it must refuse or that name a version,
GetModelMetadata, grpc.health.v1 Check. So the rules and error texts have one implementation.

The Python side owns all state: it sends the policy to the data plane (and again on every
reload, as a new generation) and tells it when the canary breaker trips. The data plane reports on
its stdout what the Python router's telemetry would have recorded: request metrics summed per
label set (``RequestCounts``, every 100 ms and before a sync), each canary call's outcome for the
breaker (``CanaryCall``), and whole records for requests whose canary failed (logged and counted
as fallbacks here). It appends the other requests' exposure lines to the exposure log itself, in
the Python telemetry's format (user ids hashed with the same key). So metrics, the exposure log
and the breaker see every request whichever path served it, without a Python step per request.

``stop`` turns health NOT_SERVING, then closes the data plane's stdin: it stops taking calls,
answers those in flight, writes their records and exits; then the Python router stops and closes
(as ``router.shutdown`` for the Python data plane). No accepted request goes unrecorded.
"""
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import grpc

from crocodile.errors import UserError
from crocodile.serving.policy import CANARY, FAIL, STABLE
from crocodile.serving.router import Router, RouterState, ServerTls, build_router_server
from crocodile.serving.router_telemetry import LATENCY_BUCKETS, CanaryCall, RequestCounts

log = logging.getLogger("crocodile.serving.router")

BINARY_ENV = "CROCODILE_ROUTER_DATA_PLANE"
BUILT_BINARY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "build", "native", "router_data_plane")
READY_TIMEOUT_S = 10.0
OWN_ERROR = "router data plane: "  # how the data plane's own error lines start (stderr)
SYNC_TIMEOUT_S = 10.0
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
METHODS = {"P": "Predict", "R": "Regress"}
ARMS = {"S": STABLE, "C": CANARY}


def find_binary(explicit: Optional[str] = None) -> str:
    """The data plane executable: ``explicit``, else $CROCODILE_ROUTER_DATA_PLANE, else the one
    ``make native-router`` builds."""
    path = explicit or os.environ.get(BINARY_ENV) or BUILT_BINARY
    if not os.access(path, os.X_OK):
        raise UserError(f"the native router data plane is not at {path}: build it with `make native-router` "
                        f"(apt-get install g++ libgrpc++-dev), or name it with "
                        f"--data-plane-binary or ${BINARY_ENV}")
    return path


def _hex(text: str) -> str:
    return text.encode("utf-8").hex() or "-"


def policy_command(generation: int, state: RouterState) -> str:
    policy = state.policy
    domains = " ".join(f"{domain} {share!r}" for domain, share in sorted(policy.domains.items()))
    return (f"policy {generation} {_hex(policy.experiment)} {_hex(policy.salt)} {policy.default_canary_share!r} "
            f"{'fail' if policy.on_canary_failure == FAIL else 'fallback'} {len(policy.domains)} {domains}".rstrip())


def _unhex(text: str) -> str:
    return "" if text == "-" else bytes.fromhex(text).decode("utf-8", "replace")


class NativeDataPlane:
    """Starts the compiled data plane on ``host:port`` in front of ``router``; ``port`` once started."""

    def __init__(self, router: Router, port: int, host: str = "[::]", binary: Optional[str] = None,
                 max_concurrent_rpcs: int = 512, tls: Optional[ServerTls] = None, grace_s: float = 10.0,
                 threads: int = 1):
        self.router = router
        self.binary = find_binary(binary)
        # Private (0700): the slow path's socket, and the TLS material handed to the data plane.
        self._folder = tempfile.mkdtemp(prefix="crocodile-router-")
        slow_path = f"unix:{os.path.join(self._folder, 'control.sock')}"
        self._server, _ = build_router_server(router, 0, address=slow_path, max_concurrent_rpcs=None)
        self._args = [self.binary, "--host", host, "--port", str(port), "--stable", router.backends[STABLE],
                      "--canary", router.backends[CANARY], "--slow-path", slow_path,
                      "--model-name", router.model_name,
                      "--max-message-bytes", str(dict(router.message_options)["grpc.max_receive_message_length"]),
                      "--max-concurrent-rpcs", str(max_concurrent_rpcs),
                      "--backend-timeout-s", repr(router.backend_timeout_s), "--grace-s", repr(grace_s),
                      "--threads", str(threads), "--latency-buckets", ",".join(repr(b) for b in LATENCY_BUCKETS)]
        if router.telemetry.exposure_path:
            self._args += ["--exposure-log", router.telemetry.exposure_path]
        if router.user_id_hasher is not None:
            self._args += ["--user-hash-key-file", self._private_file("user_hash.key", router.user_id_hasher.key)]
        if tls is not None:
            self._args += ["--tls-cert", self._private_file("cert.pem", tls.certificate_chain),
                           "--tls-key", self._private_file("key.pem", tls.private_key)]
        if router.backend_tls is not None:
            self._args.append("--backend-tls")
            if router.backend_tls.root_certificates:
                self._args += ["--backend-tls-ca", self._private_file("ca.pem", router.backend_tls.root_certificates)]
            if router.backend_tls.server_name:
                self._args += ["--backend-tls-server-name", router.backend_tls.server_name]
        self._tokens = sorted(router.auth_tokens)
        self._generation = itertools.count(1)
        self._states = {}  # generation -> RouterState
        self._generation_of = {}  # id(RouterState) -> generation
        self._control_lock = threading.Lock()
        self._syncs = {}  # sync token -> Event
        self._sync_count = itertools.count(1)
        self._process = None
        self._reader = None
        self.port = None
        self.records = 0
        self._stopping = False

    def _private_file(self, name: str, data: bytes) -> str:
        path = os.path.join(self._folder, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        return path

    # --- control -------------------------------------------------------------------------
    def _send(self, line: str) -> None:
        with self._control_lock:
            if self._process is None or self._process.stdin.closed:
                return
            try:
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()
            except (BrokenPipeError, ValueError):
                log.error("router data plane is gone; cannot send %r", line.split(" ", 1)[0])

    def _state_command(self, state: RouterState) -> str:
        generation = self._generation_of.get(id(state))
        if generation is None:
            generation = next(self._generation)
            self._states[generation] = state
            self._generation_of[id(state)] = generation
            return policy_command(generation, state)
        return f"abort {generation}" if state.breaker.tripped else policy_command(generation, state)

    def _on_state(self, state: RouterState) -> None:
        """A new policy (reload) or a tripped breaker."""
        with self._control_lock:
            command = self._state_command(state)
        self._send(command)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> int:
        self.router.state_listeners.append(self._on_state)  # before reading the state: no reload is missed
        commands = [self._state_command(self.router.state)]
        if self._tokens:
            commands.append(f"tokens {len(self._tokens)} " + " ".join(_hex(t) for t in self._tokens))
        self._process = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
        self._process.stdin.write("\n".join(commands + ["start"]) + "\n")
        self._process.stdin.flush()
        ready = self._process.stdout.readline()
        if not ready.startswith("ready "):
            self._process.wait(READY_TIMEOUT_S)
            said = [line[len(OWN_ERROR):].strip() for line in self._process.stderr.read().splitlines()
                    if line.startswith(OWN_ERROR)]  # its own words, not gRPC's log lines
            self._server.stop(0)  # never started: stops nothing, releases the socket
            shutil.rmtree(self._folder, ignore_errors=True)
            raise OSError(said[-1] if said else f"router data plane exited with {self._process.returncode}")
        self.port = int(ready.split()[1])
        self._server.start()  # the slow path (the data plane waits for it: wait-for-ready)
        self._reader = threading.Thread(target=self._read_records, name="router-data-plane-records", daemon=True)
        self._reader.start()
        threading.Thread(target=self._log_stderr, name="router-data-plane-stderr", daemon=True).start()
        self.router.record_sources.append(self.sync)
        return self.port

    def sync(self) -> None:
        """Returns once every record the data plane has made so far is with the router's telemetry."""
        token = next(self._sync_count)
        done = self._syncs[token] = threading.Event()
        self._send(f"sync {token}")
        if not done.wait(SYNC_TIMEOUT_S):
            log.error("router data plane did not answer sync %d in %.0f s", token, SYNC_TIMEOUT_S)
        self._syncs.pop(token, None)

    def stop(self) -> None:
        """Graceful, as ``router.shutdown``: health NOT_SERVING, the data plane answers and records what
        it accepted, then the Python router stops and is closed (every record written out)."""
        self._stopping = True
        self.router.stop_health()
        if self._process is not None:
            with self._control_lock:
                self._process.stdin.close()
            self._process.wait()
            self._reader.join()
        self._server.stop(2.0).wait(5.0)
        self.router.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    # --- records -------------------------------------------------------------------------
    def _read_records(self) -> None:
        for line in self._process.stdout:
            try:
                if line.startswith("sync "):
                    event = self._syncs.get(int(line.split()[1]))
                    if event is not None:
                        event.set()
                    continue
                kind, *fields = line.rstrip("\n").split("\t")
                if kind == "m":
                    counts = self._counts(fields)
                    self.router.telemetry.submit(counts)
                    self.records += counts.requests
                elif kind == "o":
                    generation, failed, latency_ms = fields
                    self.router.telemetry.submit(CanaryCall(self._states[int(generation)], failed == "1",
                                                            float(latency_ms)))
                elif kind == "r":
                    self.router.submit_record(self._record(fields))
                    self.records += 1
                else:
                    raise ValueError(f"unknown record kind {kind!r}")
            except Exception:  # a malformed line must not stop the reader: later records still count
                log.exception("router data plane record not understood: %r", line[:200])
        if not self._stopping:
            log.error("router data plane exited with status %s: the router's port is closed", self._process.wait())

    def _counts(self, fields) -> RequestCounts:
        generation, method, domain, assigned, served, version, code, requests, seconds, buckets = fields
        requests = int(requests)
        return RequestCounts(self._states[int(generation)], METHODS[method], domain, ARMS[assigned], ARMS[served],
                             None if version == "-" else int(version), STATUS_NAMES[int(code)], requests,
                             float(seconds), [int(count) for count in buckets.split(",")])

    def _record(self, fields) -> dict:
        (generation, wall_time, latency_us, method, request_id, domain, user, assigned, served, version,
         fallback, code, canary_call, canary_ms, canary_code, canary_details) = fields
        state = self._states[int(generation)]
        seconds = float(latency_us) / 1e6
        status = STATUS_NAMES[int(code)]
        record = {"time": float(wall_time), "request_id": _unhex(request_id), "method": METHODS[method],
                  "experiment": state.policy.experiment, "user": _unhex(user), "domain": int(domain),
                  "assigned_arm": ARMS[assigned], "served_arm": ARMS[served], "arm": ARMS[assigned],
                  "version": None if version == "-" else int(version), "fallback": fallback == "1",
                  "status": status, "latency_ms": round(seconds * 1e3, 3), "_state": state, "_seconds": seconds,
                  "_domain_label": state.policy.domain_label(int(domain)),
                  "_canary_call": None if canary_call == "-" else (canary_call == "1", float(canary_ms))}
        name = STATUS_NAMES[int(canary_code)]  # whole records are those whose canary failed
        record.update(_canary_error=name, canary_error=f"{name}: {_unhex(canary_details)}")
        return record

    def _log_stderr(self) -> None:
        for line in self._process.stderr:
            log.warning("%s", line.rstrip())
