"""Starting and stopping the local server processes the serving benchmarks measure.

Shared by benchmarks/serving_latency.py and benchmarks/model_server_latency.py: a free port, a
progress line on stderr, ``crocodile`` subcommands launched as separate processes (as deployed)
and awaited until they print ``listening on port N``, and the median (min, max) summary of paired
per-round numbers.

``source``: run the subcommand from another checkout of this repository (e.g.
``git worktree add /tmp/base main``) instead of the installed code, so that old and new server code
can be measured interleaved in one run against the same client, model and machine load.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

# The repository's top-level folders as ``crocodile`` subpackages (setup.py's package_dir).
SUBPACKAGES = ("model", "pipeline", "serving", "simulation", "benchmarks")

# Imports ``crocodile`` from the folder given as first argument, then runs its command line.
_FROM_SOURCE = """
import importlib.util, os, sys
root = sys.argv.pop(1)
folders = {"crocodile": "crocodile", **{"crocodile." + name: name for name in %r}}
class SourceFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in folders:
            return None
        folder = os.path.join(root, folders[name])
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
sys.meta_path.insert(0, SourceFinder)
sys.argv[0] = "crocodile"
from crocodile.cli import run
run()
""" % (SUBPACKAGES,)


def progress(name: str):
    """A function printing ``[name] message`` on stderr (stdout carries the JSON)."""
    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)
    return log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def crocodile_command(args: Sequence[str], source: Optional[str] = None) -> List[str]:
    """``python -m crocodile ARGS``, from ``source`` (a checkout of this repository) when given."""
    if source is None:
        return [sys.executable, "-m", "crocodile", *args]
    source = os.path.abspath(source)
    if not os.path.isfile(os.path.join(source, "serving", "cli.py")):
        raise SystemExit(f"{source}: not a checkout of this repository (no serving/cli.py)")
    return [sys.executable, "-c", _FROM_SOURCE, source, *args]


def launch(command: Sequence[str], log_path: str, timeout_s: float = 300.0) -> Tuple[subprocess.Popen, int]:
    """Starts ``command`` with its output in ``log_path``; (process, port) once it is listening."""
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(list(command), stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(log_path) as f:
            match = re.search(r"listening on port (\d+)", f.read())
        if match:
            return process, int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.25)
    process.kill()
    with open(log_path) as f:
        raise RuntimeError(f"{' '.join(command[:4])} ... did not start: {f.read()[-2000:]}")


def stop(processes: Sequence[subprocess.Popen], timeout_s: float = 60.0) -> None:
    """SIGTERM to each (they drain), then wait; a process that does not end is killed."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds a process has used so far (Linux /proc; None elsewhere or once it ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def checkout_commit(folder: str) -> str:
    """The checkout's HEAD commit, '+' when it has uncommitted changes ('' when not a git checkout)."""
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def median_min_max(values) -> dict:
    """Median, min and max of per-round numbers (paired differences or ratios), rounded to 3 digits."""
    values = np.asarray(values, dtype=float)
    return {"median": round(float(np.median(values)), 3), "min": round(float(values.min()), 3),
            "max": round(float(values.max()), 3)}
