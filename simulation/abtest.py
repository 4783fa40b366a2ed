"""The simulated online A/B test: world traffic, ranking by the arm's model, true clicks and GMV.

One traffic and policy code path (`simulate`) with two scorers (crocodile.simulation.ab_scorers):
- `LiveScorer`: every request goes through the canary router over gRPC; the arm comes from the
  router's trailing metadata. A few thousand requests: checks routing, sample ratio, exposure log.
- `OfflineScorer`: the two SavedModels' `serving_default` in-process, thousands of requests
  per model call, with the router's own assignment function. Millions of impressions.

Per request: the world draws who arrives and in which domain (traffic shares, user activity)
and a candidate set from that domain's pool; the arm's model scores the candidates; the top
`slate_size` are shown; clicks are drawn from the world's TRUE click probability (position
examination included), purchases from P(purchase | click), GMV = price of each purchase.

Oracle lift: when both models' scores are known for every request (offline always; live with
in-process `oracle_models`), the expected clicks and GMV of the list EACH model would have
shown are summed exactly from the true probabilities (no sampling), over the same traffic.
That is the true lift the estimates are judged against.

Requests arrive as a Poisson process over the world's `days` (sorted uniform times), so the
report can plot the cumulative lift over simulated time.
"""
import dataclasses
from typing import Dict, Optional

import numpy as np

from crocodile.errors import UserError
from crocodile.simulation import stats

REQUESTS_PER_CHUNK = 2048       # requests scored per model call (times candidates per request)
PRE_PERIOD_SEED_OFFSET = 1_000_003  # the pre-period's traffic seed is the run's seed plus this
SECONDS_PER_DAY = 86400


@dataclasses.dataclass
class SimulationResult:
    """Per-request outcomes (chronological) and the exact oracle sums per domain."""

    user: np.ndarray
    domain: np.ndarray
    canary: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    purchases: np.ndarray
    gmv: np.ndarray
    timestamp: np.ndarray
    version: np.ndarray
    num_domains: int
    slate_size: int
    # [arm (0 stable, 1 canary), domain] expected clicks / GMV had EVERY request got that arm.
    oracle_clicks: Optional[np.ndarray] = None
    oracle_gmv: Optional[np.ndarray] = None
    oracle_requests: Optional[np.ndarray] = None  # requests per domain

    def cells(self, upto: Optional[int] = None) -> stats.Cells:
        n = self.user.size if upto is None else upto
        return stats.Cells.from_events(self.user[:n], self.domain[:n], self.canary[:n], self.impressions[:n],
                                       self.clicks[:n], self.purchases[:n], self.gmv[:n])


def _top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Candidates in descending score order, the first k (ties broken by candidate order)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, axis=1)


def _expected(world, prices, user, domain, shown):
    """Expected clicks and GMV per request of a shown list, from the true probabilities."""
    positions = np.arange(shown.shape[1])[None, :]
    p_click = world.click_probability(user[:, None], shown, domain[:, None], positions)
    p_buy = world.purchase_probability(user[:, None], shown, domain[:, None])
    price = prices[shown]
    return p_click.sum(axis=1), (p_click * p_buy * price).sum(axis=1), p_click, p_buy, price


def policy_canary_shares(policy, num_domains: int) -> np.ndarray:
    """The canary share of each domain from a CanaryPolicy; NaN for all without a policy."""
    if policy is None:
        return np.full(num_domains, np.nan)
    return np.array([policy.share_for(d) for d in range(num_domains)])


def sample_traffic(world, rng, n: int, num_candidates: int):
    """n arriving requests: (user, domain, [n, num_candidates] candidate items from the domain pool)."""
    user, domain = world.sample_requests(rng, n)
    candidates = np.empty((n, num_candidates), np.int64)
    for d in np.unique(domain):
        rows = np.flatnonzero(domain == d)
        candidates[rows] = world.sample_candidates(rng, int(d), rows.size, num_candidates)
    return user, domain, candidates


def simulate(world, scorer, num_requests: int, seed: int = 0, slate_size: Optional[int] = None,
             candidates_per_request: Optional[int] = None, chunk: int = REQUESTS_PER_CHUNK,
             progress: bool = True) -> SimulationResult:
    """Runs `num_requests` requests of world traffic through `scorer` (the one code path)."""
    k = slate_size or world.config.slate_size
    num_candidates = candidates_per_request or world.config.candidates_per_request
    if k > num_candidates:
        raise UserError(f"slate size {k} exceeds candidates per request {num_candidates}")
    traffic_rng, outcome_rng, time_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    duration = world.config.days * SECONDS_PER_DAY
    timestamp = world.config.start_timestamp + np.sort(time_rng.random(num_requests)) * duration
    columns = {name: [] for name in ("user", "domain", "canary", "clicks", "purchases", "gmv", "version")}
    num_domains = world.num_domains
    prices = world.item_features(np.arange(world.num_items))["price"]  # GMV of one purchase, per item
    oracle_clicks, oracle_gmv = np.zeros((2, num_domains)), np.zeros((2, num_domains))
    have_oracle = True
    bar = _progress(num_requests * k, progress)
    for start in range(0, num_requests, chunk):
        n = min(chunk, num_requests - start)
        user, domain, candidates = sample_traffic(world, traffic_rng, n, num_candidates)
        request_ids = np.char.add(f"ab{seed}-", np.arange(start, start + n).astype(str))
        scored = scorer.score(user, domain, candidates, request_ids)
        shown = _top_k(scored.shown, candidates, k)
        _, _, p_click, p_buy, price = _expected(world, prices, user, domain, shown)
        clicked = outcome_rng.random(p_click.shape) < p_click
        bought = clicked & (outcome_rng.random(p_click.shape) < p_buy)
        for name, value in (("user", user), ("domain", domain), ("canary", scored.canary),
                            ("clicks", clicked.sum(axis=1)), ("purchases", bought.sum(axis=1)),
                            ("gmv", (bought * price).sum(axis=1)),
                            ("version", scored.version if scored.version is not None else np.full(n, -1))):
            columns[name].append(value)
        if scored.stable is None:
            have_oracle = False
        else:
            for arm, scores in enumerate((scored.stable, scored.canary_scores)):
                clicks_e, gmv_e, *_ = _expected(world, prices, user, domain, _top_k(scores, candidates, k))
                oracle_clicks[arm] += np.bincount(domain, clicks_e, minlength=num_domains)
                oracle_gmv[arm] += np.bincount(domain, gmv_e, minlength=num_domains)
        bar.update(n * k)
    bar.close()
    data = {name: np.concatenate(parts) for name, parts in columns.items()}
    return SimulationResult(
        user=data["user"], domain=data["domain"], canary=data["canary"].astype(bool),
        impressions=np.full(num_requests, k, np.int64), clicks=data["clicks"], purchases=data["purchases"],
        gmv=data["gmv"], timestamp=timestamp, version=data["version"], num_domains=num_domains, slate_size=k,
        oracle_clicks=oracle_clicks if have_oracle else None, oracle_gmv=oracle_gmv if have_oracle else None,
        oracle_requests=np.bincount(data["domain"], minlength=num_domains) if have_oracle else None)


def oracle_lifts(result: SimulationResult) -> Optional[Dict[str, Dict[str, float]]]:
    """True relative lifts per scope ('overall', 'domain d') and metric, from the oracle sums.

    Same traffic for both arms, so every ratio's denominator cancels: the CTR lift (and the
    clicks-per-user lift) is the ratio of expected clicks, the GMV-per-user lift that of GMV.
    """
    if result.oracle_clicks is None:
        return None
    out = {}
    scopes = [("overall", slice(None))] + [(f"domain {d}", d) for d in range(result.num_domains)]
    for scope, index in scopes:
        clicks = result.oracle_clicks[:, index].sum(axis=-1) if scope == "overall" else result.oracle_clicks[:, index]
        gmv = result.oracle_gmv[:, index].sum(axis=-1) if scope == "overall" else result.oracle_gmv[:, index]
        requests = result.oracle_requests.sum() if scope == "overall" else result.oracle_requests[index]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[scope] = {
                "ctr_stable": float(clicks[0] / (requests * result.slate_size)),
                "ctr_canary": float(clicks[1] / (requests * result.slate_size)),
                "ctr": float(clicks[1] / clicks[0] - 1),
                "clicks_per_user": float(clicks[1] / clicks[0] - 1),
                "gmv_per_user": float(gmv[1] / gmv[0] - 1),
            }
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="imp", unit_scale=True, disable=not enabled, desc="A/B impressions")
