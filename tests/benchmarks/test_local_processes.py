"""The serving benchmarks' process helpers: running another checkout's code, waiting for a server's
port, per-process CPU time and the paired summary."""
import os
import subprocess
import sys
import time

import pytest

from crocodile.benchmarks.local_processes import (cpu_seconds, crocodile_command, launch, median_min_max,
                                                  stop)


def fake_checkout(root, marker: str):
    """A minimal checkout whose command line prints where its modules were imported from."""
    for folder in ("crocodile", "serving"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "serving" / "cli.py").write_text("")
    (root / "crocodile" / "cli.py").write_text(
        "import sys\nimport crocodile.serving.cli as serving_cli\n"
        f"def run():\n    print({marker!r}, serving_cli.__file__, sys.argv[1:])\n")
    return root


def test_a_baseline_source_runs_that_checkouts_code(tmp_path):
    source = fake_checkout(tmp_path / "old", "old code")
    output = subprocess.run(crocodile_command(["model-server", "--port", "0"], str(source)),
                            capture_output=True, text=True, check=True).stdout
    assert output.startswith("old code")
    assert str(source / "serving" / "cli.py") in output  # crocodile.serving -> <checkout>/serving
    assert "['model-server', '--port', '0']" in output
    with pytest.raises(SystemExit, match="not a checkout"):
        crocodile_command(["router"], str(tmp_path))
    assert crocodile_command(["router"]) == [sys.executable, "-m", "crocodile", "router"]


def test_launch_returns_the_printed_port_and_reports_a_failed_start(tmp_path):
    server, port = launch([sys.executable, "-c", "import time; print('x listening on port 4711', flush=True); "
                           "time.sleep(60)"], str(tmp_path / "ok.log"), timeout_s=30)
    assert port == 4711 and server.poll() is None
    stop([server], timeout_s=10)
    assert server.poll() is not None
    with pytest.raises(RuntimeError, match="no such flag"):
        launch([sys.executable, "-c", "print('no such flag'); raise SystemExit(2)"], str(tmp_path / "bad.log"),
               timeout_s=30)


def test_cpu_seconds_follows_the_process_own_clock():
    pid = os.getpid()
    before, own_before = cpu_seconds(pid), sum(os.times()[:2])
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    used, own_used = cpu_seconds(pid) - before, sum(os.times()[:2]) - own_before
    assert used == pytest.approx(own_used, abs=0.03) and used >= 0.25
    assert cpu_seconds(2**22 + 1) is None  # no such process


def test_median_min_max_by_hand():
    assert median_min_max([0.5, -0.25, 2.0, 0.1]) == {"median": 0.3, "min": -0.25, "max": 2.0}
