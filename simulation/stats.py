"""Statistics of the A/B test: user-clustered lifts, Welch tests, SRM, corrections, MDE, CUPED.

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
- Clicks per user and GMV per user in a domain: Welch's t-test on the users' values.
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

ALPHA = 0.05
POWER = 0.80
SRM_ALARM_P = 0.001
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
class Comparison:
    """Canary vs stable on one metric in one scope (a domain or overall)."""

    metric: str
    test: str
    stable: float
    canary: float
    abs_lift: float
    abs_ci: tuple
    rel_lift: float
    rel_ci: tuple
    p_value: float
    se_abs: float
    mde_rel: float
    p_holm: float = float("nan")
    p_bh: float = float("nan")
    cuped: bool = False


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2))


def _mde_rel(se_abs: float, control: float, alpha: float, power: float) -> float:
    return float((_z(alpha) + sps.norm.ppf(power)) * se_abs / abs(control)) if control else float("nan")


def stratified_ratio_comparison(num, den, canary, cluster, stratum, weights, metric="ratio",
                                alpha=ALPHA, power=POWER, covariate=None) -> Comparison:
    """Lift of sum_d w_d (sum num / sum den)_{arm, d}: delta method by linearisation, clustered.

    `stratum` indexes `weights`; `cluster` is the unit whose cells are correlated (the user).
    With one stratum this is the plain user-level delta method for a ratio metric.
    `covariate` (a pre-period value per cell) turns on CUPED for the numerator, see `_cuped_numerator`.
    """
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    canary = np.asarray(canary, bool)
    stratum = np.asarray(stratum, np.int64)
    weights = np.asarray(weights, np.float64)
    key = stratum * 2 + canary
    if covariate is not None:
        num = _cuped_numerator(num, den, np.asarray(covariate, np.float64), stratum, key, weights.size)
    totals_num = np.bincount(key, num, minlength=2 * weights.size)
    totals_den = np.bincount(key, den, minlength=2 * weights.size)
    # Strata absent from the data (weight 0, e.g. domains outside the experiment) count as 0.
    ratio = np.divide(totals_num, totals_den, out=np.zeros_like(totals_num), where=totals_den > 0)
    value_stable = float(np.sum(weights * ratio[0::2]))
    value_canary = float(np.sum(weights * ratio[1::2]))
    # Linearised contribution of each cell to its arm's value (sums to 0 within a stratum-arm).
    contribution = weights[stratum] * (num - ratio[key] * den) / totals_den[key]
    abs_part = np.where(canary, contribution, -contribution)
    if value_stable > 0:
        rel_part = np.where(canary, contribution / value_stable, -value_canary / value_stable ** 2 * contribution)
    else:  # nothing in stable (e.g. no purchase yet): no relative lift
        rel_part = np.full(contribution.shape, np.nan)
    _, cluster_index = np.unique(np.asarray(cluster), return_inverse=True)
    n_clusters = int(cluster_index.max()) + 1

    def clustered_variance(part):
        sums = np.bincount(cluster_index, part, minlength=n_clusters)
        return n_clusters / (n_clusters - 1) * float(np.sum((sums - sums.mean()) ** 2))

    se_abs = np.sqrt(clustered_variance(abs_part))
    se_rel = np.sqrt(clustered_variance(rel_part))
    abs_lift = value_canary - value_stable
    rel_lift = value_canary / value_stable - 1 if value_stable > 0 else float("nan")
    z = _z(alpha)
    p_value = float(2 * sps.norm.sf(abs(abs_lift) / se_abs)) if se_abs > 0 else float("nan")
    return Comparison(metric, "delta-method z (user-clustered)", value_stable, value_canary, abs_lift,
                      (abs_lift - z * se_abs, abs_lift + z * se_abs), rel_lift,
                      (rel_lift - z * se_rel, rel_lift + z * se_rel), p_value, float(se_abs),
                      _mde_rel(se_abs, value_stable, alpha, power))


def _cuped_numerator(num, den, covariate, stratum, key, num_strata):
    """num - theta_d (x - mean_d x): CUPED on a ratio's numerator (Deng et al. 2013, appendix B).

    x is centred on its mean over BOTH arms of the stratum, so the adjustment has expectation 0
    under randomisation and the estimate stays unbiased. theta_d regresses the linearised
    numerator (num - R_arm den, mean 0 within each arm) on x; with den = 1 this is plain CUPED.
    """
    counts = np.bincount(stratum, minlength=num_strata)
    centred = covariate - (np.bincount(stratum, covariate, minlength=num_strata) / np.maximum(counts, 1))[stratum]
    totals_num = np.bincount(key, num, minlength=2 * num_strata)
    totals_den = np.bincount(key, den, minlength=2 * num_strata)
    ratio = np.divide(totals_num, totals_den, out=np.zeros_like(totals_num), where=totals_den > 0)
    residual = num - ratio[key] * den
    sxy = np.bincount(stratum, residual * centred, minlength=num_strata)
    sxx = np.bincount(stratum, centred * centred, minlength=num_strata)
    theta = np.divide(sxy, sxx, out=np.zeros_like(sxy), where=sxx > 0)
    return num - theta[stratum] * centred


def welch_comparison(y_stable, y_canary, metric="mean", alpha=ALPHA, power=POWER) -> Comparison:
    """Welch's t-test on per-user values; relative-lift interval by the delta method."""
    y_stable = np.asarray(y_stable, np.float64)
    y_canary = np.asarray(y_canary, np.float64)
    n_s, n_c = y_stable.size, y_canary.size
    m_s, m_c = y_stable.mean(), y_canary.mean()
    v_s, v_c = y_stable.var(ddof=1) / n_s, y_canary.var(ddof=1) / n_c
    se_abs = float(np.sqrt(v_s + v_c))
    abs_lift = float(m_c - m_s)
    if se_abs > 0:
        dof = (v_s + v_c) ** 2 / (v_s ** 2 / (n_s - 1) + v_c ** 2 / (n_c - 1))
        t_crit = float(sps.t.ppf(1 - alpha / 2, dof))
        p_value = float(2 * sps.t.sf(abs(abs_lift) / se_abs, dof))
    else:
        t_crit, p_value = _z(alpha), float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):  # no GMV at all in stable: no relative lift
        rel_lift = float(m_c / m_s - 1)
        se_rel = float(np.sqrt(v_c / m_s ** 2 + m_c ** 2 * v_s / m_s ** 4))
    z = _z(alpha)
    return Comparison(metric, "Welch t", float(m_s), float(m_c), abs_lift,
                      (abs_lift - t_crit * se_abs, abs_lift + t_crit * se_abs), rel_lift,
                      (rel_lift - z * se_rel, rel_lift + z * se_rel), p_value, se_abs,
                      _mde_rel(se_abs, m_s, alpha, power))


def cuped_adjust(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y - theta (x - mean x), theta = cov(y, x) / var(x), pooled over both arms."""
    y = np.asarray(y, np.float64)
    x = np.asarray(x, np.float64)
    var_x = x.var()
    theta = float(np.mean((x - x.mean()) * (y - y.mean())) / var_x) if var_x > 0 else 0.0
    return y - theta * (x - x.mean())


def msprt(estimate, variance, tau: float, alpha: float = ALPHA):
    """Always-valid p-values and intervals of a sequence of looks (mSPRT, Johari, Pekelis & Walsh).

    `estimate[k]`, `variance[k]`: the lift and its (delta-method) variance at look k. With a
    normal mixture N(0, tau^2) over the true lift, Lambda_k = sqrt(V/(V+tau^2)) exp(est^2 tau^2 /
    (2 V (V+tau^2))); the always-valid p-value is min_{j<=k} 1/Lambda_j and the interval is the
    set of lifts theta0 with Lambda_k(theta0) < 1/alpha. Valid whenever the run is stopped,
    however often it was looked at. Returns (p_values, lower, upper) arrays.
    """
    est = np.asarray(estimate, np.float64)
    var = np.asarray(variance, np.float64)
    t2 = tau ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lambda = 0.5 * np.log(var / (var + t2)) + est ** 2 * t2 / (2 * var * (var + t2))
        p_values = np.minimum.accumulate(np.minimum(1.0, np.exp(-log_lambda)))
        half_width = np.sqrt(var * (var + t2) / t2 * (2 * np.log(1 / alpha) + np.log((var + t2) / var)))
    return p_values, est - half_width, est + half_width


def naive_impression_ztest(clicks_stable, imps_stable, clicks_canary, imps_canary) -> float:
    """Two-proportion z-test treating every impression as independent. WRONG under user
    randomisation (impressions of a user are correlated); kept to show the miscalibration."""
    p_s, p_c = clicks_stable / imps_stable, clicks_canary / imps_canary
    pooled = (clicks_stable + clicks_canary) / (imps_stable + imps_canary)
    se = np.sqrt(pooled * (1 - pooled) * (1 / imps_stable + 1 / imps_canary))
    return 2 * sps.norm.sf(np.abs(p_c - p_s) / se)


def srm_pvalue(n_canary: float, n_stable: float, canary_share: float) -> float:
    """Chi-square goodness of fit (1 dof) of the observed split against the planned share."""
    total = n_canary + n_stable
    if total == 0 or not 0 < canary_share < 1:
        return float("nan")
    expected = np.array([canary_share, 1 - canary_share]) * total
    statistic = float(np.sum((np.array([n_canary, n_stable]) - expected) ** 2 / expected))
    return float(sps.chi2.sf(statistic, 1))


def _ascending(p_values):
    """(p, NaN-filled output, indices of the non-NaN p-values in ascending order)."""
    p = np.asarray(p_values, np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    return p, np.full(p.shape, np.nan), valid[np.argsort(p[valid])]


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control). NaNs are left out."""
    p, out, order = _ascending(p_values)
    m = order.size
    out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false-discovery rate). NaNs are left out."""
    p, out, order = _ascending(p_values)
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out


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
            metrics[name] = welch_comparison(y[~canary], y[canary], name, alpha, power)
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
            "alpha": alpha, "power": power, "multiple_comparison": "Holm (decisions); Benjamini-Hochberg shown"}
