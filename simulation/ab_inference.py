"""Inference primitives of the A/B test: estimators, tests, corrections, sequential p-values.

Pure numpy/scipy on arrays of per-(user, domain, arm) values; crocodile.simulation.stats
assembles them into the per-domain and overall analysis. Methods and their sources are
listed in that module's docstring.
"""
import dataclasses

import numpy as np
from scipy import stats as sps

from crocodile.model.multiple_testing import benjamini_hochberg, holm  # noqa: F401 (re-exported)

ALPHA = 0.05
POWER = 0.80
SRM_ALARM_P = 0.001


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


POOLED, WELCH = "pooled", "welch"


def mean_comparison(y_stable, y_canary, metric="mean", alpha=ALPHA, power=POWER, variance=POOLED) -> Comparison:
    """Two-sample t-test and interval on per-user values; relative-lift interval by the delta method.

    `variance`:
    - "pooled" (the default for per-user metrics, Student's t): one variance from both arms.
      Users are randomised, so with no effect both arms are draws from one population, and the
      pooled variance is the variance of the randomisation distribution of the difference (a
      permutation test's, to its first two moments); inverting the test under a constant shift
      gives Student's interval. Chosen because Welch's t under-covers heavy-tailed, mostly-zero
      GMV when one arm is small: A/A runs on the world with a 10% canary share (26-93 canary
      users per domain) rejected 9-19% of the time with Welch, 3-7% with the pooled variance
      and 3-6% with a 999-permutation test (tests/simulation/test_abtest_calibration.py).
      With equal arms the two agree.
    - "welch": each arm's own variance (Welch-Satterthwaite degrees of freedom).
    """
    y_stable = np.asarray(y_stable, np.float64)
    y_canary = np.asarray(y_canary, np.float64)
    n_s, n_c = y_stable.size, y_canary.size
    m_s, m_c = y_stable.mean(), y_canary.mean()
    if variance == POOLED:
        pooled = (((n_s - 1) * y_stable.var(ddof=1) + (n_c - 1) * y_canary.var(ddof=1)) / (n_s + n_c - 2)
                  if n_s + n_c > 2 else float("nan"))
        v_s, v_c = pooled / n_s, pooled / n_c
        dof = n_s + n_c - 2
        test = "Student t (pooled variance)"
    elif variance == WELCH:
        v_s, v_c = y_stable.var(ddof=1) / n_s, y_canary.var(ddof=1) / n_c
        dof = None
        test = "Welch t"
    else:
        raise ValueError(f"variance must be {POOLED!r} or {WELCH!r}, got {variance!r}")
    se_abs = float(np.sqrt(v_s + v_c))
    abs_lift = float(m_c - m_s)
    if se_abs > 0:
        if dof is None:
            dof = (v_s + v_c) ** 2 / (v_s ** 2 / (n_s - 1) + v_c ** 2 / (n_c - 1))
        t_crit = float(sps.t.ppf(1 - alpha / 2, dof))
        p_value = float(2 * sps.t.sf(abs(abs_lift) / se_abs, dof))
    else:
        t_crit, p_value = _z(alpha), float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):  # no GMV at all in stable: no relative lift
        rel_lift = float(m_c / m_s - 1)
        se_rel = float(np.sqrt(v_c / m_s ** 2 + m_c ** 2 * v_s / m_s ** 4))
    return Comparison(metric, test, float(m_s), float(m_c), abs_lift,
                      (abs_lift - t_crit * se_abs, abs_lift + t_crit * se_abs), rel_lift,
                      (rel_lift - t_crit * se_rel, rel_lift + t_crit * se_rel), p_value, se_abs,
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
