"""A/A calibration of the A/B statistics on the world itself: many small runs, one model in both arms.

In an A/A test the arm cannot change what a user sees, so the outcomes of a stretch of world
traffic do not depend on the assignment. One long stream of traffic is therefore simulated
once (crocodile.simulation.abtest.simulate, ranked by the world's own relevance: no
TensorFlow) and cut into `runs` consecutive blocks; each block is one independent run whose
users are assigned with the router's function under a fresh salt (a new experiment). Every
run is analysed by crocodile.simulation.stats exactly as a report would be, so the share of
runs with p < alpha is the false-positive rate of the real analysis on the world's own
lognormal activity, multi-domain users and lognormal prices.
"""
import dataclasses
from typing import Dict, Optional

import numpy as np

from crocodile.serving.policy import CanaryPolicy
from crocodile.simulation import abtest, stats
from crocodile.simulation.ab_scorers import Scored


class RelevanceScorer:
    """Ranks by the world's true relevance; every request on 'stable' (A/A runs assign afterwards)."""

    def __init__(self, world):
        self._world = world

    def score(self, user, domain, candidates, request_ids=None, oracle_rows=None) -> Scored:
        scores = self._world.relevance_probability(user[:, None], candidates, domain[:, None])
        return Scored(np.zeros(user.size, bool), scores)


@dataclasses.dataclass
class AACalibration:
    """p-values per run: `p[(scope, metric)]` is an array over runs (NaN where not computed)."""

    runs: int
    requests_per_run: int
    p: Dict[tuple, np.ndarray]
    p_holm: Dict[tuple, np.ndarray]
    users_per_arm: Dict[str, np.ndarray]
    # GMV/user per domain with Welch's t instead of the report's pooled-variance t (for comparison).
    p_welch_gmv: Dict[str, np.ndarray]

    def rejection_rate(self, scope: str, metric: str, alpha: float = stats.ALPHA, holm: bool = False) -> float:
        p = (self.p_holm if holm else self.p)[(scope, metric)]
        p = p[~np.isnan(p)]
        return float(np.mean(p < alpha)) if p.size else float("nan")


def aa_runs(world, runs: int, requests_per_run: int, seed: int = 0, canary_share: float = 0.5,
            domain: Optional[int] = None, pre_requests_per_run: int = 0,
            candidates_per_request: Optional[int] = None) -> AACalibration:
    """`runs` A/A runs of `requests_per_run` requests each (only `domain`'s traffic if given).

    `pre_requests_per_run` > 0 adds a pre-period of that many requests per run and analyses
    with CUPED. `candidates_per_request` (default: the world's) may be the slate size: which
    model ranks does not matter in an A/A test, and fewer candidates make the runs cheaper.
    """
    def stream(n, stream_seed):
        return abtest.simulate(world, RelevanceScorer(world), n, seed=stream_seed, progress=False, domain=domain,
                               chunk=8192, candidates_per_request=candidates_per_request)

    result = stream(runs * requests_per_run, seed)
    pre = stream(runs * pre_requests_per_run, seed + abtest.PRE_PERIOD_SEED_OFFSET) if pre_requests_per_run else None
    user_ids = world.user_features(np.arange(world.num_users))["user_id"]
    shares = np.full(world.num_domains, canary_share)
    if domain is not None:  # the other domains carry no traffic: not in the experiment
        shares[:] = 0.0
        shares[domain] = canary_share
    p, p_holm, users, welch = {}, {}, {}, {}
    for run in range(runs):
        block = slice(run * requests_per_run, (run + 1) * requests_per_run)
        cells = stats.Cells.from_events(result.user[block], result.domain[block],
                                        np.zeros(requests_per_run, bool), result.impressions[block],
                                        result.clicks[block], result.purchases[block], result.gmv[block])
        policy = CanaryPolicy(f"aa-calibration-{seed}", f"run-{run}", canary_share)
        cells.canary = policy.assign_many(cells.domain, user_ids[cells.user]) & (shares[cells.domain] > 0)
        if pre is not None:
            pre_block = slice(run * pre_requests_per_run, (run + 1) * pre_requests_per_run)
            cells = cells.with_pre_period(stats.Cells.from_events(
                pre.user[pre_block], pre.domain[pre_block], np.zeros(pre_requests_per_run, bool),
                pre.impressions[pre_block], pre.clicks[pre_block], pre.purchases[pre_block], pre.gmv[pre_block]))
        analysis = stats.analyze(cells, shares, use_cuped=pre is not None)
        scopes = [analysis["overall"]] + [analysis["domains"][d] for d in range(world.num_domains)]
        for scope in scopes:
            users.setdefault(scope.scope, np.full(runs, np.nan))[run] = min(scope.users_stable, scope.users_canary)
            for name in stats.METRICS:
                m = scope.metrics.get(name)
                p.setdefault((scope.scope, name), np.full(runs, np.nan))[run] = np.nan if m is None else m.p_value
                p_holm.setdefault((scope.scope, name), np.full(runs, np.nan))[run] = (
                    np.nan if m is None else m.p_holm)
        for d in range(world.num_domains):
            rows = cells.domain == d
            y, arm = cells.gmv[rows], cells.canary[rows]
            if shares[d] > 0 and min(arm.sum(), (~arm).sum()) >= 2:
                welch.setdefault(f"domain {d}", np.full(runs, np.nan))[run] = stats.mean_comparison(
                    y[~arm], y[arm], variance="welch").p_value
    return AACalibration(runs, requests_per_run, p, p_holm, users, welch)
