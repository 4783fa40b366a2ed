"""Test configuration shared by every test module.

TF_USE_LEGACY_KERAS must be set before TensorFlow is imported anywhere (DESIGN
section 3), so it is set here, at collection time, before any test module loads.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Library logs of the `crocodile` commands the tests start go to a throw-away folder.
os.environ.setdefault("CROCODILE_LOG_DIR", os.path.join(__import__("tempfile").gettempdir(),
                                                        "crocodile-test-logs"))

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


def _generate_world_logs(out: str, impressions: int, users: int, items: int) -> str:
    """Writes a small world's logs with the real `crocodile data generate` command."""
    subprocess.run([sys.executable, "-m", "crocodile", "data", "generate", "--out", out,
                    "--impressions", str(impressions), "--users", str(users), "--items", str(items),
                    "--quiet"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def generate_world_logs():
    """`generate_world_logs(out, impressions, users, items) -> out` for data-hungry fixtures."""
    return _generate_world_logs


_SESSION = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leaves with the session's status and without interpreter teardown, as the `crocodile`
    commands do (crocodile.console.exit_process): TensorFlow and gRPC threads still alive at
    teardown can abort the process after every test passed ("terminate called after throwing
    an instance of ... FATAL: exception not rethrown", seen once in a clean-clone run), which
    turned a green suite into a failed `make test`."""
    if "exitstatus" in _SESSION:
        from crocodile.console import exit_process

        exit_process(_SESSION["exitstatus"])
