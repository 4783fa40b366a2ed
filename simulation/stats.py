"""Statistics of the A/B test: user-clustered lifts, t-tests, SRM, corrections, MDE, CUPED.

Everything here is numpy/scipy on per-(user, domain, arm) aggregates (`Cells`), so it runs
the same on a few thousand live requests and on tens of millions of offline impressions.

Randomisation unit: the router assigns the arm by a salted hash of the user within a domain
(DESIGN section 6), so the unit of analysis is the user. Impressions of one user are
correlated (some users click much more than others); treating impressions as independent
understates the variance (see `naive_impression_ztest`, kept only to show that).

Methods (Deng, Knoblich & Lu, KDD 2018; GrowthBook/Statsig documentation):
- CTR = sum(clicks) / sum(impressions) is a ratio metric. Its variance comes from the delta
  method, written as a linearisation: every cell contributes (clicks - R * impressions) /
  total impressions; contributions are summed per user (the cluster) and the variance is
  the sample variance of the user sums. This equals the textbook formula
  [s2_Y - 2 R s_YN + R^2 s2_N] / (n N_bar^2) for one arm, and extends unchanged to
  relative lifts and to domain-stratified overall estimates.
- Clicks per user and GMV per user in a domain: Student's t-test (pooled variance) on the users'
  values; Welch's under-covers heavy-tailed GMV when an arm is small (see `mean_comparison`).
- Relative lift R_T / R_C - 1: delta-method interval (not Fieller, not log-ratio).
- Overall (all domains): a post-stratified estimate, sum_d w_d * metric_{arm,d}, with the
  same weights w_d for both arms, because canary shares may differ by domain and a pooled
  ratio would then mix the domain mix into the lift. Weights: each domain's share of all
  impressions (CTR) or its users per distinct user (per-user metrics). Normal (z) test.
- Sample ratio mismatch: chi-square goodness of fit on users per arm against the policy's
  share, per domain and overall ((user, domain) cells, the router's randomisation unit);
  alarm at p < 0.001 (GrowthBook's and Statsig's threshold).
- Per-domain p-values: Holm (family-wise, for decisions) and Benjamini-Hochberg (for
  exploration), each across the domains in the experiment, per metric.
- MDE: the smallest relative lift this run detects with the given power at the given alpha,
  from the observed standard error: (z_{1-alpha/2} + z_{power}) * SE / control value.
- CUPED (Deng, Xu, Kohavi & Walker, WSDM 2013) with a pre-period covariate: per-user metrics
  y - theta (x - mean x); for CTR the numerator is adjusted by the linearised pre-period CTR
  (their appendix B), so the same delta-method machinery applies.
All p-values in the tables are fixed-horizon: valid at the planned end of the run, not for
peeking. `msprt` gives always-valid p-values and intervals for the cumulative view.
"""
import dataclasses
from typing import Dict, List, Optional

import numpy as np
from scipy import stats as sps

# The primitives live in ab_inference; they are part of this module's interface too.
from crocodile.simulation.ab_inference import (  # noqa: F401
    ALPHA, POWER, SRM_ALARM_P, Comparison, benjamini_hochberg, cuped_adjust, holm, msprt,
    mean_comparison, naive_impression_ztest, srm_pvalue, stratified_ratio_comparison)

# Below this many users in an arm the normal approximations are rough: impressions per user
# are heavy-tailed, so a few heavy users dominate (A/A runs with ~50 users in an arm gave
# about 10% false positives at alpha 0.05). The report flags such domains.
MIN_USERS_PER_ARM = 200

# metric name -> (numerator field, denominator field or None for "per user")
METRICS: Dict[str, tuple] = {
    "ctr": ("clicks", "impressions"),
    "clicks_per_user": ("clicks", None),
    "gmv_per_user": ("gmv", None),
}


@dataclasses.dataclass
class Cells:
    """One row per (user, domain, arm): that user's traffic in that domain under that arm.

    `pre_impressions` / `pre_clicks` / `pre_gmv` are optional pre-period covariates for CUPED.
    """

    user: np.ndarray
    domain: np.ndarray
    canary: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    purchases: np.ndarray
    gmv: np.ndarray
    pre_impressions: Optional[np.ndarray] = None
    pre_clicks: Optional[np.ndarray] = None
    pre_gmv: Optional[np.ndarray] = None

    @classmethod
    def from_events(cls, user, domain, canary, impressions, clicks, purchases, gmv) -> "Cells":
        """Aggregates per-request (or per-impression) arrays into cells."""
        user = np.asarray(user, np.int64)
        domain = np.asarray(domain, np.int64)
        canary = np.asarray(canary, bool)
        num_domains = int(domain.max()) + 1 if domain.size else 1
        key = (user * num_domains + domain) * 2 + canary
        keys, inverse = np.unique(key, return_inverse=True)

        def total(values):
            return np.bincount(inverse, np.asarray(values, np.float64), minlength=keys.size)

        return cls(user=keys // 2 // num_domains, domain=keys // 2 % num_domains, canary=(keys % 2).astype(bool),
                   impressions=total(impressions), clicks=total(clicks), purchases=total(purchases),
                   gmv=total(gmv))

    def with_pre_period(self, pre: "Cells") -> "Cells":
        """These cells with CUPED covariates: each (user, domain)'s impressions, clicks and GMV
        in `pre` (a pre-period in which every user got the stable model), 0 where absent."""
        num_domains = int(max(self.domain.max(initial=0), pre.domain.max(initial=0))) + 1
        keys, inverse = np.unique(pre.user * num_domains + pre.domain, return_inverse=True)
        key = self.user * num_domains + self.domain
        at = np.minimum(np.searchsorted(keys, key), max(keys.size - 1, 0))
        found = (keys[at] == key) if keys.size else np.zeros(key.size, bool)

        def joined(values):
            totals = np.bincount(inverse, values, minlength=keys.size)
            return np.where(found, totals[at] if keys.size else 0.0, 0.0)

        return dataclasses.replace(self, pre_impressions=joined(pre.impressions), pre_clicks=joined(pre.clicks),
                                   pre_gmv=joined(pre.gmv))

    def subset(self, mask: np.ndarray) -> "Cells":
        return Cells(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[mask])
                        for f in dataclasses.fields(self)})

    def values(self, field: Optional[str]) -> np.ndarray:
        """A column by name; None means 'one per cell' (the denominator of per-user metrics)."""
        return np.ones(self.user.size) if field is None else np.asarray(getattr(self, field), np.float64)


@dataclasses.dataclass
class ScopeResult:
    """Counts, SRM and metric comparisons for one domain or for all domains."""

    scope: str
    canary_share: float
    users_stable: int
    users_canary: int
    impressions_stable: float
    impressions_canary: float
    srm_p: float
    srm_alarm: bool
    metrics: Dict[str, Comparison]


def _domain_result(cells: Cells, domain: int, share: float, alpha, power, use_cuped) -> ScopeResult:
    canary = cells.canary
    n_c, n_s = int(np.unique(cells.user[canary]).size), int(np.unique(cells.user[~canary]).size)
    srm_p = srm_pvalue(n_c, n_s, share)
    metrics = {}
    if n_c >= 2 and n_s >= 2:
        one = np.zeros(cells.user.size, np.int64)
        covariate = _covariate(cells, "ctr") if use_cuped else None
        metrics["ctr"] = stratified_ratio_comparison(cells.clicks, cells.impressions, canary, cells.user, one,
                                                     [1.0], "ctr", alpha, power, covariate)
        metrics["ctr"].cuped = covariate is not None
        for name, field in (("clicks_per_user", "clicks"), ("gmv_per_user", "gmv")):
            y = cells.values(field)
            pre = _covariate(cells, name)
            if use_cuped and pre is not None:
                y = cuped_adjust(y, pre)
            metrics[name] = mean_comparison(y[~canary], y[canary], name, alpha, power)
            metrics[name].cuped = bool(use_cuped and pre is not None)
    return ScopeResult(f"domain {domain}", share, n_s, n_c, float(cells.impressions[~canary].sum()),
                       float(cells.impressions[canary].sum()), srm_p,
                       bool(srm_p < SRM_ALARM_P), metrics)


def overall_comparison(cells: Cells, domains: List[int], metric: str, num_domains: int,
                       alpha=ALPHA, power=POWER, use_cuped: bool = False) -> Comparison:
    """One metric over `domains`, post-stratified: the same domain weights for both arms.

    With `use_cuped` (and pre-period values in the cells) the numerator is CUPED-adjusted per domain.
    """
    sub = cells.subset(np.isin(cells.domain, domains))
    num_field, den_field = METRICS[metric]
    covariate = _covariate(sub, metric) if use_cuped else None
    if den_field:  # ratio metric: each domain's share of all impressions
        weights = np.bincount(sub.domain, sub.impressions, minlength=num_domains)
        weights = weights / weights.sum()
    else:  # per-user metric: users of each domain per distinct user (a user may visit several)
        weights = np.bincount(sub.domain, minlength=num_domains) / np.unique(sub.user).size
    comparison = stratified_ratio_comparison(sub.values(num_field), sub.values(den_field), sub.canary, sub.user,
                                             sub.domain, weights, metric, alpha, power, covariate)
    comparison.cuped = covariate is not None
    return comparison


def _covariate(cells: Cells, metric: str) -> Optional[np.ndarray]:
    """The pre-period covariate of a metric: clicks or GMV per user; for CTR the linearised
    pre-period CTR, pre_clicks - R_pre,d * pre_impressions (R_pre,d: the domain's pre-period CTR)."""
    if metric == "ctr":
        if cells.pre_clicks is None or cells.pre_impressions is None:
            return None
        size = int(cells.domain.max(initial=0)) + 1
        clicks = np.bincount(cells.domain, cells.pre_clicks, minlength=size)
        imps = np.bincount(cells.domain, cells.pre_impressions, minlength=size)
        pre_ctr = np.divide(clicks, imps, out=np.zeros_like(clicks), where=imps > 0)
        return cells.pre_clicks - pre_ctr[cells.domain] * cells.pre_impressions
    return {"clicks_per_user": cells.pre_clicks, "gmv_per_user": cells.pre_gmv}[metric]


def _overall_result(cells: Cells, shares: np.ndarray, in_experiment: List[int], alpha, power,
                    use_cuped) -> ScopeResult:
    canary = cells.canary
    # One Bernoulli(share_d) per (user, domain) cell of the domains that are split at all.
    split = (shares[cells.domain] > 0) & (shares[cells.domain] < 1)
    expected_canary = float(np.sum(shares[cells.domain[split]]))
    n_cells = int(split.sum())
    srm_p = float("nan")
    if n_cells:
        srm_stat = ((canary[split].sum() - expected_canary) ** 2 / expected_canary
                    + ((~canary[split]).sum() - (n_cells - expected_canary)) ** 2 / (n_cells - expected_canary))
        srm_p = float(sps.chi2.sf(srm_stat, 1))
    metrics = {}
    if in_experiment:
        metrics = {name: overall_comparison(cells, in_experiment, name, shares.size, alpha, power, use_cuped)
                   for name in METRICS}
    return ScopeResult("overall", float("nan"), int(np.unique(cells.user[~canary]).size),
                       int(np.unique(cells.user[canary]).size), float(cells.impressions[~canary].sum()),
                       float(cells.impressions[canary].sum()), srm_p, bool(srm_p < SRM_ALARM_P), metrics)


def analyze(cells: Cells, canary_shares, alpha: float = ALPHA, power: float = POWER,
            use_cuped: bool = False) -> Dict[str, object]:
    """The whole analysis: {'overall': ScopeResult, 'domains': [ScopeResult per domain]}.

    `canary_shares[d]` is the policy's canary share of domain d. Domains with share 0 or 1
    are not in the experiment (no comparison is possible); they get counts only.
    """
    shares = np.asarray(canary_shares, np.float64)
    domains = []
    for domain in range(shares.size):
        domains.append(_domain_result(cells.subset(cells.domain == domain), domain, float(shares[domain]),
                                      alpha, power, use_cuped))
    # A NaN share means 'unknown policy': compared when both arms have users, SRM not computed.
    in_experiment = [d for d, r in enumerate(domains) if shares[d] not in (0.0, 1.0) and r.metrics]
    for name in METRICS:
        p = np.array([domains[d].metrics[name].p_value for d in in_experiment])
        for d, p_h, p_b in zip(in_experiment, holm(p), benjamini_hochberg(p)):
            domains[d].metrics[name].p_holm = float(p_h)
            domains[d].metrics[name].p_bh = float(p_b)
    return {"overall": _overall_result(cells, shares, in_experiment, alpha, power, use_cuped), "domains": domains,
            "in_experiment": in_experiment, "alpha": alpha, "power": power, "multiple_comparison": "Holm (decisions); Benjamini-Hochberg shown"}
