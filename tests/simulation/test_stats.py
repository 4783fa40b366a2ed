"""A/B statistics against independent computations, and calibrated by many small simulated runs."""
import numpy as np
import pytest
from scipy import stats as sps

from crocodile.simulation import stats

BASE_CTR = 0.04


def clustered_users(rng, n_users, lift=0.0, user_sd=1.0, mean_imps=20):
    """Users with their own click propensity (logit-normal) and a Poisson number of impressions.

    The canary multiplies every user's click probability by (1 + lift), so the population CTR
    ratio of canary to stable is exactly 1 + lift: the true relative lift is `lift`.
    """
    logit = np.log(BASE_CTR / (1 - BASE_CTR)) + user_sd * rng.standard_normal(n_users)
    p = 1 / (1 + np.exp(-logit))
    canary = rng.random(n_users) < 0.5
    p = np.where(canary, np.minimum(p * (1 + lift), 1.0), p)
    imps = 1 + rng.poisson(mean_imps - 1, n_users)
    clicks = rng.binomial(imps, p)
    return canary, imps.astype(float), clicks.astype(float)


def ctr_comparison(canary, imps, clicks):
    users = np.arange(canary.size)
    return stats.stratified_ratio_comparison(clicks, imps, canary, users, np.zeros(canary.size, int), [1.0], "ctr")


def binomial_band(n_runs, rate, tail=0.0005):
    return sps.binom.ppf(tail, n_runs, rate) / n_runs, sps.binom.ppf(1 - tail, n_runs, rate) / n_runs


def test_single_arm_delta_variance_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    canary, imps, clicks = clustered_users(rng, 3000)
    # Compare a ratio against a constant: put everything in the canary arm of a one-stratum
    # comparison is not possible, so check the linearised variance of one arm directly.
    y, n = clicks[canary], imps[canary]
    ratio = y.sum() / n.sum()
    textbook = (y.var(ddof=1) - 2 * ratio * np.cov(y, n)[0, 1] + ratio ** 2 * n.var(ddof=1)) / (y.size * n.mean() ** 2)
    other_y, other_n = clicks[~canary], imps[~canary]
    other_ratio = other_y.sum() / other_n.sum()
    other = (other_y.var(ddof=1) - 2 * other_ratio * np.cov(other_y, other_n)[0, 1]
             + other_ratio ** 2 * other_n.var(ddof=1)) / (other_y.size * other_n.mean() ** 2)
    result = ctr_comparison(canary, imps, clicks)
    # The linearisation uses one n/(n-1) over all users instead of one per arm: O(1/n) apart.
    assert result.se_abs ** 2 == pytest.approx(textbook + other, rel=2e-3)
    assert result.stable == pytest.approx(other_ratio)
    assert result.canary == pytest.approx(ratio)


def test_delta_method_interval_matches_a_user_level_bootstrap():
    rng = np.random.default_rng(2)
    canary, imps, clicks = clustered_users(rng, 4000, lift=0.05)
    result = ctr_comparison(canary, imps, clicks)
    boot_rel, boot_abs = [], []
    n_boot = 2000
    arms = {}
    for arm in (False, True):
        y, n = clicks[canary == arm], imps[canary == arm]
        # Resample users (clusters) with replacement within the arm: multinomial weights.
        weights = rng.multinomial(y.size, np.full(y.size, 1 / y.size), size=n_boot)
        arms[arm] = (weights @ y) / (weights @ n)
    boot_rel = arms[True] / arms[False] - 1
    boot_abs = arms[True] - arms[False]
    se_rel = (result.rel_ci[1] - result.rel_ci[0]) / (2 * 1.959964)
    assert se_rel == pytest.approx(boot_rel.std(ddof=1), rel=0.08)
    assert result.se_abs == pytest.approx(boot_abs.std(ddof=1), rel=0.08)
    lo, hi = np.percentile(boot_rel, [2.5, 97.5])
    assert result.rel_ci[0] == pytest.approx(lo, abs=0.25 * se_rel)
    assert result.rel_ci[1] == pytest.approx(hi, abs=0.25 * se_rel)


@pytest.mark.parametrize("variance, equal_var", [("pooled", True), ("welch", False)])
def test_mean_comparison_matches_scipy_ttest_ind(variance, equal_var):
    rng = np.random.default_rng(3)
    stable = rng.lognormal(0.0, 1.2, 800) * (rng.random(800) < 0.1)
    canary = rng.lognormal(0.1, 1.5, 500) * (rng.random(500) < 0.12)
    result = stats.mean_comparison(stable, canary, "gmv_per_user", variance=variance)
    reference = sps.ttest_ind(canary, stable, equal_var=equal_var)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.abs_lift / result.se_abs == pytest.approx(reference.statistic, rel=1e-9)
    ci = reference.confidence_interval(0.95)
    assert result.abs_ci == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert result.rel_lift == pytest.approx(canary.mean() / stable.mean() - 1)


def test_srm_matches_scipy_chisquare():
    for n_canary, n_stable, share in ((5100, 4900, 0.5), (1030, 8970, 0.1), (333, 667, 0.3)):
        total = n_canary + n_stable
        reference = sps.chisquare([n_canary, n_stable], [share * total, (1 - share) * total])
        assert stats.srm_pvalue(n_canary, n_stable, share) == pytest.approx(reference.pvalue, rel=1e-12)
    assert np.isnan(stats.srm_pvalue(10, 0, 1.0))


def test_holm_and_benjamini_hochberg_on_a_hand_checked_case():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02, np.nan])


def test_stratified_per_user_metric_with_one_stratum_is_welch():
    rng = np.random.default_rng(4)
    y = rng.exponential(3.0, 5000) * (rng.random(5000) < 0.3)
    canary = rng.random(5000) < 0.4
    ratio = stats.stratified_ratio_comparison(y, np.ones(y.size), canary, np.arange(y.size),
                                              np.zeros(y.size, int), [1.0])
    welch = stats.mean_comparison(y[~canary], y[canary], variance="welch")
    assert ratio.abs_lift == pytest.approx(welch.abs_lift)
    assert ratio.se_abs == pytest.approx(welch.se_abs, rel=1e-3)
    assert ratio.p_value == pytest.approx(welch.p_value, rel=0.02)


def test_aa_false_positive_rate_is_nominal_and_the_naive_test_is_not():
    rng = np.random.default_rng(5)
    n_runs = 1000
    delta_p, naive_p = np.empty(n_runs), np.empty(n_runs)
    for run in range(n_runs):
        canary, imps, clicks = clustered_users(rng, 2000)
        delta_p[run] = ctr_comparison(canary, imps, clicks).p_value
        naive_p[run] = stats.naive_impression_ztest(clicks[~canary].sum(), imps[~canary].sum(),
                                                    clicks[canary].sum(), imps[canary].sum())
    low, high = binomial_band(n_runs, 0.05)
    delta_rate, naive_rate = float(np.mean(delta_p < 0.05)), float(np.mean(naive_p < 0.05))
    print(f"A/A false-positive rate at alpha 0.05 over {n_runs} runs: delta method {delta_rate:.3f} "
          f"(band {low:.3f}-{high:.3f}), naive per-impression z {naive_rate:.3f}")
    assert low <= delta_rate <= high
    assert naive_rate > high


def test_interval_covers_the_true_lift_95_percent_of_the_time():
    rng = np.random.default_rng(6)
    n_runs, true_lift = 1000, 0.10
    covered_rel, covered_abs = 0, 0
    for _ in range(n_runs):
        canary, imps, clicks = clustered_users(rng, 2000, lift=true_lift)
        result = ctr_comparison(canary, imps, clicks)
        covered_rel += result.rel_ci[0] <= true_lift <= result.rel_ci[1]
    low, high = binomial_band(n_runs, 0.95)
    print(f"95% relative-lift interval coverage over {n_runs} runs: {covered_rel / n_runs:.3f} "
          f"(band {low:.3f}-{high:.3f})")
    assert low <= covered_rel / n_runs <= high


def multi_domain_cells(rng, n_users, shares, drop_canary=0.0, lift=0.0):
    """Users visiting 1-3 domains; the arm is drawn per (user, domain) with the domain's share."""
    rows = []
    for domain, share in enumerate(shares):
        users = np.flatnonzero(rng.random(n_users) < [0.9, 0.5, 0.3][domain % 3])
        canary = rng.random(users.size) < share
        keep = ~(canary & (rng.random(users.size) < drop_canary))
        canary_u, imps, clicks = clustered_users(rng, users.size, lift=0.0)
        clicks = np.where(canary, rng.binomial(imps.astype(int), np.minimum(clicks / imps * (1 + lift), 1)), clicks)
        gmv = clicks * rng.lognormal(3, 1, users.size) * (rng.random(users.size) < 0.2)
        rows.append((users[keep], np.full(keep.sum(), domain), canary[keep], imps[keep], clicks[keep],
                     gmv[keep]))
    user, domain, canary, imps, clicks, gmv = (np.concatenate(c) for c in zip(*rows))
    return stats.Cells.from_events(user, domain, canary, imps, clicks, np.zeros(user.size), gmv)


def test_skewed_split_raises_the_srm_alarm_and_a_fair_one_does_not():
    rng = np.random.default_rng(7)
    shares = [0.5, 0.2, 0.1]
    fair = stats.analyze(multi_domain_cells(rng, 20000, shares), shares)
    assert not fair["overall"].srm_alarm
    assert not any(d.srm_alarm for d in fair["domains"])
    skewed = stats.analyze(multi_domain_cells(rng, 20000, shares, drop_canary=0.05), shares)
    assert skewed["overall"].srm_alarm and skewed["overall"].srm_p < stats.SRM_ALARM_P
    assert skewed["domains"][0].srm_alarm


def test_analyze_reports_every_domain_with_corrections_and_skips_unsplit_domains():
    rng = np.random.default_rng(8)
    shares = [0.5, 0.5, 0.0]
    cells = multi_domain_cells(rng, 6000, shares, lift=0.3)
    result = stats.analyze(cells, shares)
    first, second, off = result["domains"]
    assert off.metrics == {} and off.users_canary == 0 and np.isnan(off.srm_p)
    for name in stats.METRICS:
        holm = sorted([first.metrics[name].p_holm, second.metrics[name].p_holm])
        raw = sorted([first.metrics[name].p_value, second.metrics[name].p_value])
        assert holm[0] == pytest.approx(min(1, 2 * raw[0]))
    # The overall CTR covers the split domains only (domain 2, all on stable, is left out), each
    # weighted by its share of their impressions, the same weights in both arms.
    in_split = cells.domain < 2
    weights = np.bincount(cells.domain[in_split], cells.impressions[in_split], minlength=2)
    weights = weights / weights.sum()

    def ctr(domain, arm):
        rows = (cells.domain == domain) & (cells.canary == arm)
        return cells.clicks[rows].sum() / cells.impressions[rows].sum()

    hand = sum(w * ctr(d, True) for d, w in enumerate(weights)) / sum(w * ctr(d, False) for d, w in enumerate(weights))
    overall = result["overall"].metrics["ctr"]
    assert overall.rel_lift == pytest.approx(hand - 1, rel=1e-9)
    assert overall.stable == pytest.approx(sum(w * ctr(d, False) for d, w in enumerate(weights)), rel=1e-9)
    # The true lift (0.3) is inside this run's interval, which is narrow enough to exclude 0.15 and 0.45.
    assert overall.rel_ci[0] < 0.3 < overall.rel_ci[1]
    assert overall.rel_ci[0] > 0.15 and overall.rel_ci[1] < 0.45
    # The run's MDE is (z_.975 + z_.8) standard errors of the control value.
    assert overall.mde_rel == pytest.approx(2.8016 * overall.se_abs / overall.stable, rel=1e-3)


def test_cuped_removes_the_covariate_variance_and_keeps_the_mean():
    rng = np.random.default_rng(9)
    activity = rng.gamma(2.0, 2.0, 20000)
    pre = rng.poisson(activity)
    post = rng.poisson(activity)
    adjusted = stats.cuped_adjust(post, pre)
    rho = np.corrcoef(post, pre)[0, 1]
    assert adjusted.mean() == pytest.approx(post.mean())
    assert adjusted.var() == pytest.approx(post.var() * (1 - rho ** 2), rel=1e-6)


def test_cells_from_events_aggregates_per_user_domain_and_arm():
    cells = stats.Cells.from_events(user=[3, 3, 3, 1], domain=[0, 0, 1, 0], canary=[True, True, False, False],
                                    impressions=[10, 10, 10, 10], clicks=[1, 2, 0, 1],
                                    purchases=[0, 1, 0, 0], gmv=[0, 5.0, 0, 0])
    rows = sorted(zip(cells.user, cells.domain, cells.canary, cells.impressions, cells.clicks, cells.gmv))
    assert rows == [(1, 0, False, 10, 1, 0), (3, 0, True, 20, 3, 5.0), (3, 1, False, 10, 0, 0)]


def test_pre_period_covariates_join_by_user_and_domain():
    cells = stats.Cells.from_events(user=[1, 1, 2], domain=[0, 1, 0], canary=[True, False, False],
                                    impressions=[10, 10, 10], clicks=[1, 0, 2], purchases=[0, 0, 0], gmv=[0, 0, 0])
    pre = stats.Cells.from_events(user=[1, 1, 3], domain=[0, 0, 0], canary=[False, True, False],
                                  impressions=[10, 10, 10], clicks=[2, 3, 9], purchases=[0, 1, 0], gmv=[0, 7.5, 0])
    joined = cells.with_pre_period(pre)
    rows = sorted(zip(joined.user, joined.domain, joined.pre_clicks, joined.pre_gmv))
    assert rows == [(1, 0, 5.0, 7.5), (1, 1, 0.0, 0.0), (2, 0, 0.0, 0.0)]


def test_cuped_in_the_analysis_narrows_per_user_intervals_and_is_marked():
    rng = np.random.default_rng(10)
    n = 8000
    activity = rng.gamma(1.5, 4.0, n)
    domain = rng.integers(0, 2, n)
    canary = rng.random(n) < 0.5
    pre_clicks = rng.poisson(activity)
    clicks = rng.poisson(activity * np.where(canary, 1.05, 1.0))
    cells = stats.Cells(user=np.arange(n), domain=domain, canary=canary, impressions=np.full(n, 50.0),
                        clicks=clicks.astype(float), purchases=np.zeros(n), gmv=clicks * 2.0,
                        pre_clicks=pre_clicks.astype(float), pre_gmv=pre_clicks * 2.0)
    plain = stats.analyze(cells, [0.5, 0.5])
    adjusted = stats.analyze(cells, [0.5, 0.5], use_cuped=True)
    for scope_plain, scope_cuped in zip([plain["overall"]] + plain["domains"],
                                        [adjusted["overall"]] + adjusted["domains"]):
        before, after = scope_plain.metrics["clicks_per_user"], scope_cuped.metrics["clicks_per_user"]
        assert after.cuped and not before.cuped
        assert after.se_abs < 0.75 * before.se_abs
        assert abs(after.abs_lift - before.abs_lift) < 2 * before.se_abs
        assert not scope_cuped.metrics["ctr"].cuped  # the ratio metric is left alone


def clustered_users_with_pre_period(rng, n_users, lift=0.0):
    """clustered_users plus a pre-period of the same users (same propensity, fresh impressions)."""
    logit = np.log(BASE_CTR / (1 - BASE_CTR)) + rng.standard_normal(n_users)
    p = 1 / (1 + np.exp(-logit))
    canary = rng.random(n_users) < 0.5
    pre_imps = 1 + rng.poisson(19, n_users)
    pre_clicks = rng.binomial(pre_imps, p)
    imps = 1 + rng.poisson(19, n_users)
    clicks = rng.binomial(imps, np.where(canary, p * (1 + lift), p))
    users = np.arange(n_users)
    zeros = np.zeros(n_users, int)
    return stats.Cells(user=users, domain=zeros, canary=canary, impressions=imps.astype(float),
                       clicks=clicks.astype(float), purchases=zeros.astype(float), gmv=zeros.astype(float),
                       pre_impressions=pre_imps.astype(float), pre_clicks=pre_clicks.astype(float),
                       pre_gmv=zeros.astype(float))


@pytest.mark.slow
def test_ctr_cuped_is_calibrated_and_narrower():
    rng = np.random.default_rng(11)
    n_runs, true_lift = 1000, 0.10
    covered, width_ratio, aa_rejections = 0, [], 0
    for _ in range(n_runs):
        cells = clustered_users_with_pre_period(rng, 2000, lift=true_lift)
        plain = stats.overall_comparison(cells, [0], "ctr", 1)
        cuped = stats.overall_comparison(cells, [0], "ctr", 1, use_cuped=True)
        assert cuped.cuped and not plain.cuped
        covered += cuped.rel_ci[0] <= true_lift <= cuped.rel_ci[1]
        width_ratio.append((cuped.rel_ci[1] - cuped.rel_ci[0]) / (plain.rel_ci[1] - plain.rel_ci[0]))
        aa = stats.overall_comparison(clustered_users_with_pre_period(rng, 2000), [0], "ctr", 1, use_cuped=True)
        aa_rejections += aa.p_value < 0.05
    low, high = binomial_band(n_runs, 0.95)
    aa_low, aa_high = binomial_band(n_runs, 0.05)
    print(f"CUPED CTR over {n_runs} runs: coverage {covered / n_runs:.3f}, A/A false positives "
          f"{aa_rejections / n_runs:.3f}, interval width vs plain {np.median(width_ratio):.2f}")
    assert low <= covered / n_runs <= high
    assert aa_low <= aa_rejections / n_runs <= aa_high
    assert np.median(width_ratio) < 0.9


def test_msprt_stays_valid_under_peeking_where_the_fixed_horizon_test_does_not():
    rng = np.random.default_rng(12)
    n_runs, looks, per_look = 2000, 20, 100
    # Per-user metric, A/A: every run watched after each batch of users, stopped at the first p < 0.05.
    y = rng.exponential(1.0, (n_runs, looks * per_look))
    canary = rng.random((n_runs, looks * per_look)) < 0.5
    ends = np.arange(per_look, looks * per_look + 1, per_look) - 1

    def running(arm):  # mean and variance of the mean of one arm at every look, all runs at once
        n = np.cumsum(arm, axis=1)[:, ends]
        total = np.cumsum(y * arm, axis=1)[:, ends]
        squares = np.cumsum(y ** 2 * arm, axis=1)[:, ends]
        mean = total / n
        return mean, (squares - n * mean ** 2) / (n - 1) / n

    mean_c, var_c = running(canary)
    mean_s, var_s = running(~canary)
    estimates, variances = mean_c - mean_s, var_c + var_s
    naive_stop = np.any(2 * sps.norm.sf(np.abs(estimates) / np.sqrt(variances)) < 0.05, axis=1)
    msprt_stop = np.array([stats.msprt(e, v, tau=0.1)[0][-1] < 0.05 for e, v in zip(estimates, variances)])
    low, high = binomial_band(n_runs, 0.05)
    print(f"A/A with {looks} looks: stop at first fixed-horizon p < 0.05 in {naive_stop.mean():.3f} of runs, "
          f"always-valid mSPRT p < 0.05 in {msprt_stop.mean():.3f}")
    assert naive_stop.mean() > high
    assert msprt_stop.mean() <= 0.05


def test_msprt_p_values_and_interval_match_the_mixture_likelihood_ratio(mixture_likelihood_ratio):
    tau, alpha = 0.2, 0.05
    estimates, variances = [0.5, 0.1, 0.45], [0.04, 0.01, 0.0025]
    p_values, lower, upper = stats.msprt(estimates, variances, tau=tau, alpha=alpha)
    own = [min(1.0, 1 / mixture_likelihood_ratio(e, v, tau)) for e, v in zip(estimates, variances)]
    # Look 2 alone is weaker evidence than look 1: the always-valid p-value keeps look 1's.
    assert own[1] > own[0]
    np.testing.assert_allclose(p_values, [own[0], own[0], min(own[0], own[2])], rtol=1e-6)
    # The interval's edges are where the mixture ratio against theta0 = edge crosses 1/alpha.
    for k, (e, v) in enumerate(zip(estimates, variances)):
        for edge in (lower[k], upper[k]):
            assert mixture_likelihood_ratio(e, v, tau, theta0=edge) == pytest.approx(1 / alpha, rel=1e-5)
