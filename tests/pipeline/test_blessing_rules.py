"""The new blessing rule blesses equal candidates >= 95% of the time at the demo's size and refuses a worse one.

Trials of benchmarks/blessing_rules.py (its docstring: world rows from `crocodile data
generate` at the demo's size, fresh eval set and labels per trial, two simulated retrains
whose noise level was measured from real retrains). The full run with 400 trials and the
old rule's refusal rate is the benchmark's JSON; here fewer trials, the same code.
"""
import subprocess
import sys

import pytest

from crocodile.benchmarks import blessing_rules

pytestmark = pytest.mark.slow

# crocodile/demo.py's world preset (where benchmarks/blessing_noise.py measured the retrain noise).
DEMO = ["--preset", "demo"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("blessing") / "demo")
    subprocess.run([sys.executable, "-m", "crocodile", "data", "generate", "--out", out, *DEMO, "--quiet"],
                   check=True, capture_output=True)
    rows = blessing_rules.load_world_rows(out)
    return rows, blessing_rules.calibrate(rows, **blessing_rules.MEASURED)


def test_equal_candidates_are_blessed_and_the_old_rule_refuses_more_of_them(world):
    rows, noise = world
    equal = blessing_rules.run_trials(rows, noise, trials=60, seed=1)
    assert equal["eval_rows"] == blessing_rules.DEMO_EVAL_ROWS
    assert equal["new_blessed_rate"] >= 0.95
    assert equal["old_refusal_rate"] >= equal["new_refusal_rate"]
    # The simulated retrains are as noisy as the measured ones (overall paired SE 0.0015).
    assert 0.001 < equal["median_paired_se"]["overall"] < 0.002


def test_a_candidate_worse_on_one_domain_is_refused(world):
    rows, noise = world
    worse_sd = blessing_rules.worse_noise_sd(rows, noise, domain=1, drop=0.05)
    worse = blessing_rules.run_trials(rows, noise, trials=10, worse_domain=1, worse_sd=worse_sd, seed=2)
    assert worse["new_refusal_rate"] == 1.0
