"""A/A calibration on the world itself: hundreds of small runs, one model in both arms.

The world's own traffic (lognormal user activity, users in several domains, lognormal prices,
rare purchases) through the one simulator path, assigned by the router's hash under a fresh
salt per run, analysed exactly as a report is (crocodile.simulation.ab_calibration). A 20%
canary share makes the canary arm of the tail domains small (tens of users), where a test
that trusts the small arm's own variance fails on heavy-tailed, mostly-zero GMV.
"""
import numpy as np
import pytest
from scipy import stats as sps

from crocodile.simulation import ab_calibration, presets, stats
from crocodile.simulation.world import World, WorldConfig

RUNS, REQUESTS_PER_RUN, CANARY_SHARE = 300, 2500, 0.2


def binomial_band(n_runs, rate, tail=0.0005):
    return sps.binom.ppf(tail, n_runs, rate) / n_runs, sps.binom.isf(tail, n_runs, rate) / n_runs


@pytest.fixture(scope="module")
def calibration():
    # The demo preset's world (its users, purchase affinity and domain terms), with less skewed
    # traffic shares so that every domain gets some users in every run.
    world = World.create(WorldConfig(**{**presets.world_fields("demo"), "seed": 7, "num_items": 500,
                                        "domain_shares": (0.4, 0.25, 0.15, 0.12, 0.08)}))
    # 10 candidates = the slate: in an A/A test the ranking model does not matter.
    return ab_calibration.aa_runs(world, RUNS, REQUESTS_PER_RUN, seed=1, canary_share=CANARY_SHARE,
                                  candidates_per_request=10)


@pytest.mark.slow
def test_aa_false_positive_rates_are_nominal_for_ctr_and_gmv_per_domain(calibration):
    low, high = binomial_band(RUNS, stats.ALPHA)
    rates = {}
    for scope in ["overall"] + [f"domain {d}" for d in range(5)]:
        for metric in ("ctr", "gmv_per_user"):
            p = calibration.p[(scope, metric)]
            assert np.count_nonzero(~np.isnan(p)) == RUNS, (scope, metric)
            rates[(scope, metric)] = calibration.rejection_rate(scope, metric)
    users = {scope: int(np.median(u)) for scope, u in calibration.users_per_arm.items()}
    print(f"A/A over {RUNS} runs (canary share {CANARY_SHARE}), band {low:.3f}-{high:.3f}; median users in the "
          f"smaller arm {users}; false-positive rates:",
          ", ".join(f"{s} {m} {r:.3f}" for (s, m), r in rates.items()))
    for key, rate in rates.items():
        assert low <= rate <= high, (key, rate)


@pytest.mark.slow
def test_welch_would_under_cover_gmv_in_small_arms(calibration):
    """The same runs with Welch's t: too many false positives for GMV, pooled over the domains."""
    welch = np.concatenate([calibration.p_welch_gmv[f"domain {d}"] for d in range(5)])
    pooled = np.concatenate([calibration.p[(f"domain {d}", "gmv_per_user")] for d in range(5)])
    low, high = binomial_band(welch.size, stats.ALPHA)
    print(f"GMV/user per domain, {welch.size} tests: Welch {np.mean(welch < 0.05):.3f}, "
          f"pooled {np.mean(pooled < 0.05):.3f} (band {low:.3f}-{high:.3f})")
    assert np.mean(welch < 0.05) > high
    assert low <= np.mean(pooled < 0.05) <= high
