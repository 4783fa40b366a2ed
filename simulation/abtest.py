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
from typing import Dict, Optional, Sequence

import numpy as np

from crocodile.errors import UserError
from crocodile.simulation import stats

REQUESTS_PER_CHUNK = 2048       # requests scored per model call (times candidates per request)
PRE_PERIOD_SEED_OFFSET = 1_000_003  # the pre-period's traffic seed is the run's seed plus this
SECONDS_PER_DAY = 86400


@dataclasses.dataclass
class SimulationResult:
    """Per-request outcomes (chronological) and the oracle sums per domain."""

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
    # [arm (0 stable, 1 canary), domain] expected clicks / GMV had EVERY request got that arm:
    # exact when every request's other arm was scored, else Horvitz-Thompson totals (see `simulate`).
    oracle_clicks: Optional[np.ndarray] = None
    oracle_gmv: Optional[np.ndarray] = None
    oracle_requests: Optional[np.ndarray] = None  # requests per domain
    # [metric (0 clicks, 1 GMV), arm that served, domain]: sum over the oracle sample of
    # (1 - f) / f^2 * (canary - stable expected value)^2, f = the domain's sampling fraction.
    # All zero when the oracle is exact; the oracle lifts' sampling variances come from it.
    oracle_variance_terms: Optional[np.ndarray] = None
    oracle_sampled_requests: Optional[np.ndarray] = None  # requests per domain scored by both models
    days: float = float("nan")  # simulated duration (the world's `days`)

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


def expected_outcomes_of_ranking(world, user: np.ndarray, domain: np.ndarray, candidates: np.ndarray,
                                 scores: np.ndarray, slate_size: int, prices: Optional[np.ndarray] = None):
    """(expected clicks, expected GMV) per request when the `slate_size` best-scored candidates are
    shown: the oracle's value of a ranking, from the true probabilities (no sampling)."""
    if prices is None:
        prices = world.item_features(np.arange(world.num_items))["price"]
    clicks, gmv = _expected(world, prices, user, domain, _top_k(scores, candidates, slate_size))[:2]
    return clicks, gmv


def policy_canary_shares(policy, num_domains: int) -> np.ndarray:
    """The canary share of each domain from a CanaryPolicy; NaN for all without a policy."""
    if policy is None:
        return np.full(num_domains, np.nan)
    return np.array([policy.share_for(d) for d in range(num_domains)])


def sample_traffic(world, rng, n: int, num_candidates: int, domain: Optional[int] = None):
    """n arriving requests: (user, domain, [n, num_candidates] candidate items from the domain pool).

    With `domain`, only that domain's traffic (its users by activity x taste), e.g. to study a tail domain."""
    if domain is None:
        user, domain = world.sample_requests(rng, n)
    else:
        user, domain = world.sample_users(rng, domain, n), np.full(n, domain, np.int64)
    candidates = np.empty((n, num_candidates), np.int64)
    for d in np.unique(domain):
        rows = np.flatnonzero(domain == d)
        candidates[rows] = world.sample_candidates(rng, int(d), rows.size, num_candidates)
    return user, domain, candidates


def oracle_fractions(world, num_requests: int, oracle_requests: Optional[int],
                     domain: Optional[int] = None) -> np.ndarray:
    """Share of each domain's requests that both models score for the oracle.

    `oracle_requests` None: every request (exact oracle). Else about that many requests per
    domain (from the domain's expected traffic), all of a domain that has fewer.
    """
    if oracle_requests is None:
        return np.ones(world.num_domains)
    if oracle_requests < 1:
        raise UserError(f"oracle requests per domain must be positive, got {oracle_requests}")
    shares = np.asarray(world.config.domain_shares, np.float64)
    shares = shares / shares.sum() if domain is None else np.eye(world.num_domains)[domain]
    expected = np.maximum(shares * num_requests, 1e-9)
    return np.minimum(1.0, oracle_requests / expected)


def simulate(world, scorer, num_requests: int, seed: int = 0, slate_size: Optional[int] = None,
             candidates_per_request: Optional[int] = None, chunk: int = REQUESTS_PER_CHUNK,
             progress: bool = True, domain: Optional[int] = None,
             oracle_requests: Optional[int] = None) -> SimulationResult:
    """Runs `num_requests` requests of world traffic through `scorer` (the one code path).

    `domain`: only that domain's traffic (default: every domain by its traffic share).

    Oracle: the arm that served a request is always known exactly (its list was shown). The
    other arm's list needs the other model's scores; with `oracle_requests` (per domain) only
    a random sample of requests (Bernoulli, fraction f_d, drawn from its own stream, so
    independent of traffic, assignment and outcomes) is scored by both models. With
    d = E[canary list] - E[stable list] on a sampled request, the totals
        stable = sum(served) - sum_sample(canary-served d) / f,
        canary = sum(served) + sum_sample(stable-served d) / f
    are unbiased (Horvitz-Thompson) and exact when f = 1.
    """
    only_domain = domain
    k = slate_size or world.config.slate_size
    num_candidates = candidates_per_request or world.config.candidates_per_request
    if k > num_candidates:
        raise UserError(f"slate size {k} exceeds candidates per request {num_candidates}")
    traffic_rng, outcome_rng, time_rng, oracle_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    duration = world.config.days * SECONDS_PER_DAY
    timestamp = world.config.start_timestamp + np.sort(time_rng.random(num_requests)) * duration
    columns = {name: [] for name in ("user", "domain", "canary", "clicks", "purchases", "gmv", "version")}
    num_domains = world.num_domains
    fraction = oracle_fractions(world, num_requests, oracle_requests, only_domain)
    prices = world.item_features(np.arange(world.num_items))["price"]  # GMV of one purchase, per item
    served = np.zeros((2, num_domains))                 # [metric, domain] expected value of the shown lists
    correction = np.zeros((2, 2, num_domains))          # [metric, served arm, domain] sum of d / f
    variance_terms = np.zeros((2, 2, num_domains))
    sampled = np.zeros(num_domains)
    have_oracle = True
    bar = _progress(num_requests * k, progress)
    for start in range(0, num_requests, chunk):
        n = min(chunk, num_requests - start)
        user, domain, candidates = sample_traffic(world, traffic_rng, n, num_candidates, only_domain)
        request_ids = np.char.add(f"ab{seed}-", np.arange(start, start + n).astype(str))
        in_sample = oracle_rng.random(n) < fraction[domain]
        scored = scorer.score(user, domain, candidates, request_ids, in_sample)
        shown = _top_k(scored.shown, candidates, k)
        clicks_e, gmv_e, p_click, p_buy, price = _expected(world, prices, user, domain, shown)
        clicked = outcome_rng.random(p_click.shape) < p_click
        bought = clicked & (outcome_rng.random(p_click.shape) < p_buy)
        for name, value in (("user", user), ("domain", domain), ("canary", scored.canary),
                            ("clicks", clicked.sum(axis=1)), ("purchases", bought.sum(axis=1)),
                            ("gmv", (bought * price).sum(axis=1)),
                            ("version", scored.version if scored.version is not None else np.full(n, -1))):
            columns[name].append(value)
        bar.update(n * k)
        if scored.stable is None:
            have_oracle = False
            continue
        served[0] += np.bincount(domain, clicks_e, minlength=num_domains)
        served[1] += np.bincount(domain, gmv_e, minlength=num_domains)
        rows = np.flatnonzero(in_sample)
        if rows.size:
            u, dom, cand = user[rows], domain[rows], candidates[rows]
            arms = [expected_outcomes_of_ranking(world, u, dom, cand, scores[rows], k, prices)
                    for scores in (scored.stable, scored.canary_scores)]
            f = fraction[dom]
            arm = scored.canary[rows].astype(np.int64)
            sampled += np.bincount(dom, minlength=num_domains)
            for metric in (0, 1):
                diff = arms[1][metric] - arms[0][metric]
                for a in (0, 1):
                    mine = arm == a
                    correction[metric, a] += np.bincount(dom[mine], diff[mine] / f[mine], minlength=num_domains)
                    variance_terms[metric, a] += np.bincount(dom[mine], (1 - f[mine]) / f[mine] ** 2 * diff[mine] ** 2,
                                                             minlength=num_domains)
    bar.close()
    data = {name: np.concatenate(parts) for name, parts in columns.items()}
    oracle = None
    if have_oracle:  # [metric, arm, domain]: stable = served - canary-served d; canary = served + stable-served d
        oracle = np.stack([served - correction[:, 1], served + correction[:, 0]], axis=1)
    return SimulationResult(
        user=data["user"], domain=data["domain"], canary=data["canary"].astype(bool),
        impressions=np.full(num_requests, k, np.int64), clicks=data["clicks"], purchases=data["purchases"],
        gmv=data["gmv"], timestamp=timestamp, version=data["version"], num_domains=num_domains, slate_size=k,
        oracle_clicks=None if oracle is None else oracle[0], oracle_gmv=None if oracle is None else oracle[1],
        oracle_requests=np.bincount(data["domain"], minlength=num_domains) if have_oracle else None,
        oracle_variance_terms=variance_terms if have_oracle else None,
        oracle_sampled_requests=sampled if have_oracle else None, days=float(world.config.days))


def oracle_lifts(result: SimulationResult, domains: Optional[Sequence[int]] = None
                 ) -> Optional[Dict[str, Dict[str, float]]]:
    """True relative lifts per scope ('overall', 'domain d') and metric, from the oracle sums.

    Same traffic for both arms, so every ratio's denominator cancels: the CTR lift (and the
    clicks-per-user lift) is the ratio of expected clicks, the GMV-per-user lift that of GMV.
    'overall' covers `domains` (default all): pass the domains the estimate covers (those
    split between the arms), so that estimate and truth have the same scope.
    `*_se` is the oracle's own sampling error (0 when every request was scored by both models):
    delta method on the Horvitz-Thompson totals.
    """
    if result.oracle_clicks is None:
        return None
    overall = list(range(result.num_domains)) if domains is None else list(domains)
    terms = result.oracle_variance_terms
    if terms is None:
        terms = np.zeros((2, 2, result.num_domains))
    out = {}
    scopes = [("overall", overall)] + [(f"domain {d}", [d]) for d in range(result.num_domains)]
    for scope, index in scopes:
        clicks = result.oracle_clicks[:, index].sum(axis=-1)
        gmv = result.oracle_gmv[:, index].sum(axis=-1)
        requests = result.oracle_requests[index].sum()

        def lift_and_se(totals, metric):
            stable, canary = totals
            # Linearised error of canary/stable - 1: stable-served d / stable, canary-served d * canary / stable^2.
            variance = (terms[metric, 0, index].sum() / stable ** 2
                        + terms[metric, 1, index].sum() * canary ** 2 / stable ** 4)
            return float(canary / stable - 1), float(np.sqrt(variance))

        with np.errstate(invalid="ignore", divide="ignore"):
            ctr, ctr_se = lift_and_se(clicks, 0)
            gmv_lift, gmv_se = lift_and_se(gmv, 1)
            out[scope] = {
                "ctr_stable": float(clicks[0] / (requests * result.slate_size)),
                "ctr_canary": float(clicks[1] / (requests * result.slate_size)),
                "ctr": ctr, "clicks_per_user": ctr, "gmv_per_user": gmv_lift,
                "ctr_se": ctr_se, "clicks_per_user_se": ctr_se, "gmv_per_user_se": gmv_se,
                "clicks_stable": float(clicks[0]), "clicks_canary": float(clicks[1]),
                "gmv_stable": float(gmv[0]), "gmv_canary": float(gmv[1]),
            }
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="imp", unit_scale=True, disable=not enabled, desc="A/B impressions")
