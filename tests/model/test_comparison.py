"""Paired AUC statistic and blessing rule, checked against brute force and by simulation."""
import itertools

import numpy as np
import pytest

from crocodile.model import comparison, metrics
from crocodile.model.multiple_testing import holm


def _brute_force_delong(labels, scores):
    """Textbook DeLong: placement values from explicit pairs, sample covariances."""
    pos, neg = scores[:, labels == 1], scores[:, labels == 0]
    psi = lambda x, y: (x > y) + 0.5 * (x == y)  # noqa: E731
    v10 = np.array([[np.mean(psi(x, s_neg)) for x in s_pos] for s_pos, s_neg in zip(pos, neg)])
    v01 = np.array([[np.mean(psi(s_pos, y)) for y in s_neg] for s_pos, s_neg in zip(pos, neg)])
    cov = np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]
    return v10.mean(axis=1), np.atleast_2d(cov)


def test_unclustered_contrast_equals_textbook_delong_with_ties():
    rng = np.random.default_rng(3)
    labels = (rng.random(60) < 0.3).astype(int)
    scores = np.round(rng.normal(size=(2, 60)) + labels, 1)  # rounding makes ties
    aucs, cov = _brute_force_delong(labels, scores)
    result = comparison.auc_contrast(labels, scores, [-1, 1])
    np.testing.assert_allclose(result.aucs, aucs)
    np.testing.assert_allclose(result.aucs[0], metrics.auc(labels, scores[0]))
    expected_var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert result.se == pytest.approx(np.sqrt(expected_var), rel=1e-10)


def test_clustered_variance_matches_the_spread_of_a_cluster_bootstrap():
    """With strong per-user effects the clustered SE must follow the real spread, DeLong's not."""
    rng = np.random.default_rng(0)
    users, per_user = 150, 20
    user = np.repeat(np.arange(users), per_user)
    taste = rng.normal(size=users)[user]
    labels = (rng.random(users * per_user) < 1 / (1 + np.exp(-(taste - 1.5)))).astype(int)
    a = taste + rng.normal(size=labels.size)
    b = taste + 0.8 * rng.normal(size=labels.size) + 1.5 * rng.normal(size=users)[user]
    clustered = comparison.auc_contrast(labels, np.vstack([a, b]), [-1, 1], clusters=user)
    naive = comparison.auc_contrast(labels, np.vstack([a, b]), [-1, 1])
    diffs = []
    for _ in range(400):
        pick = rng.integers(0, users, users)
        rows = (pick[:, None] * per_user + np.arange(per_user)).ravel()
        diffs.append(metrics.auc(labels[rows], b[rows]) - metrics.auc(labels[rows], a[rows]))
    bootstrap_se = np.std(diffs)
    assert clustered.se == pytest.approx(bootstrap_se, rel=0.2)
    assert naive.se < 0.8 * bootstrap_se


def test_identical_scores_give_zero_difference_and_p_one():
    labels = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.4, 0.3, 0.8, 0.2])
    result = comparison.paired_auc(labels, s, s)
    assert result.diff == 0 and result.se == 0 and result.p_two_sided == 1.0


def test_interval_covers_the_true_difference_at_the_nominal_rate():
    """Two fixed scorers on fresh eval samples: the 95% interval covers the population difference."""
    rng = np.random.default_rng(7)

    def sample(n):
        x = rng.normal(size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-(2 * x - 2)))).astype(int)
        return y, x + 0.5 * rng.normal(size=n), x + 1.0 * rng.normal(size=n)

    y, a, b = sample(400_000)
    truth = metrics.auc(y, b) - metrics.auc(y, a)
    covered = 0
    trials = 300
    for _ in range(trials):
        r = comparison.paired_auc(*sample(1500))
        covered += r.ci_low <= truth <= r.ci_high
    # binomial 99.9% band around 0.95 with 300 trials: about [0.91, 0.98]
    assert 0.91 <= covered / trials <= 0.985


def test_blessing_rule_refuses_a_domain_made_worse_and_reports_small_domains():
    rng = np.random.default_rng(1)
    n = 40_000
    domains = rng.choice(3, n, p=[0.7, 0.28, 0.02])
    x = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x - 2.5)))).astype(int)
    baseline = x + 0.6 * rng.normal(size=n)
    equal = baseline.copy()
    decision = comparison.blessing_decision(labels, baseline, equal, domains, domain_ids=[0, 1, 2, 3],
                                            rule=comparison.BlessingRule(min_clicks=150))
    assert decision["blessed"] and decision["reasons"] == []
    assert decision["insufficient_evidence"] == [2, 3]
    assert decision["domains"]["3"]["clicks"] == 0
    worse = baseline.copy()
    hurt = domains == 1
    worse[hurt] = x[hurt] + 2.0 * rng.normal(size=hurt.sum())  # a much noisier scorer on domain 1
    decision = comparison.blessing_decision(labels, baseline, worse, domains,
                                            rule=comparison.BlessingRule(min_clicks=150))
    assert not decision["blessed"]
    assert decision["domains"]["1"]["status"] == "significantly worse"
    assert decision["domains"]["0"]["status"] == "ok"
    assert any(reason.startswith("domain 1:") for reason in decision["reasons"])


def _users_world(seed=2, users=1500, per_user=24):
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(users), per_user)
    domains = rng.choice(2, user.size, p=[0.6, 0.4])
    propensity, x = rng.normal(size=users)[user], rng.normal(size=user.size)
    labels = (rng.random(user.size) < 1 / (1 + np.exp(-(propensity + 1.5 * x - 2.0)))).astype(int)
    return rng, user, domains, x, labels, propensity + x + 0.6 * rng.normal(size=user.size)


def test_gauc_rule_ignores_what_only_reorders_users_and_the_auc_rule_does_not():
    rng, user, domains, x, labels, baseline = _users_world()
    # A per-user constant: each user's own impressions keep their order, users are shuffled against each other.
    shifted = baseline + 3.0 * rng.normal(size=user.max() + 1)[user]
    by_auc = comparison.blessing_decision(labels, baseline, shifted, domains, clusters=user)
    by_gauc = comparison.blessing_decision(labels, baseline, shifted, domains, clusters=user,
                                           rule=comparison.BlessingRule(statistic="gauc"))
    assert not by_auc["blessed"] and by_auc["domains"]["0"]["status"] == "significantly worse"
    assert by_gauc["blessed"] and by_gauc["statistic"] == "gauc"
    for result in [by_gauc["overall"], *by_gauc["domains"].values()]:
        assert result["diff"] == pytest.approx(0.0, abs=1e-12) and result["status"] == "ok"
        assert result["candidate_gauc"] == pytest.approx(result["baseline_gauc"], abs=1e-12)
    # The per-slice numbers are paired_gauc's on that slice's rows.
    on = domains == 1
    expected = comparison.paired_gauc(labels[on], baseline[on], shifted[on], user[on])
    assert by_gauc["domains"]["1"]["users"] == expected.users


def test_gauc_rule_refuses_a_domain_ranked_worse_within_users():
    rng, user, domains, x, labels, baseline = _users_world(seed=4)
    worse = baseline.copy()
    hurt = domains == 1
    worse[hurt] = baseline[hurt] + 2.5 * rng.normal(size=hurt.sum())  # noise inside each user's list
    decision = comparison.blessing_decision(labels, baseline, worse, domains, clusters=user,
                                            rule=comparison.BlessingRule(statistic="gauc"))
    assert not decision["blessed"]
    assert decision["domains"]["1"]["status"] == "significantly worse"
    assert decision["domains"]["0"]["status"] == "ok"
    assert any(reason.startswith("domain 1: gAUC") for reason in decision["reasons"])


def test_gauc_rule_needs_users_and_a_known_statistic():
    with pytest.raises(ValueError, match="statistic 'ndcg'"):
        comparison.BlessingRule(statistic="ndcg")
    _, _, domains, _, labels, baseline = _users_world(users=50)
    with pytest.raises(ValueError, match="needs the rows' users"):
        comparison.blessing_decision(labels, baseline, baseline, domains,
                                     rule=comparison.BlessingRule(statistic="gauc"))


def test_one_sided_p_value_and_holm_by_hand():
    assert comparison.p_worse_than(-0.03, 0.01, 0.01) == pytest.approx(0.0227501, rel=1e-5)  # Phi(-2)
    assert comparison.p_worse_than(0.0, 0.01, 0.01) == pytest.approx(0.8413447, rel=1e-6)   # Phi(1)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_seed_averaged_contrast_is_the_mean_of_per_seed_differences():
    rng = np.random.default_rng(5)
    labels = (rng.random(500) < 0.2).astype(int)
    scores = rng.normal(size=(4, 500)) + labels
    weights = [-0.5, -0.5, 0.5, 0.5]
    result = comparison.auc_contrast(labels, scores, weights)
    per_model = [metrics.auc(labels, s) for s in scores]
    assert result.estimate == pytest.approx(np.dot(weights, per_model))
    for combo in itertools.combinations(range(4), 2):
        assert np.isfinite(comparison.auc_contrast(labels, scores[list(combo)], [-1, 1]).se)


def test_gauc_contrast_equals_the_gauc_difference_and_a_user_bootstrap_spread():
    rng = np.random.default_rng(11)
    users = rng.integers(0, 300, 6000)
    taste = rng.normal(size=300)[users]
    labels = (rng.random(6000) < 1 / (1 + np.exp(-(rng.normal(size=6000) - 1.5)))).astype(int)
    a = labels * 0.8 + rng.normal(size=6000) + taste
    b = labels * 0.6 + rng.normal(size=6000) + taste
    result = comparison.gauc_contrast(labels, np.vstack([a, b]), [1, -1], users)
    assert result.estimate == pytest.approx(metrics.gauc(labels, a, users) - metrics.gauc(labels, b, users))
    boot = []
    for _ in range(300):
        pick = rng.integers(0, 300, 300)
        rows = np.concatenate([np.flatnonzero(users == u) for u in pick])
        # resampled users become distinct groups even when drawn twice
        groups = np.concatenate([np.full((users == u).sum(), i) for i, u in enumerate(pick)])
        boot.append(metrics.gauc(labels[rows], a[rows], groups) - metrics.gauc(labels[rows], b[rows], groups))
    assert result.se == pytest.approx(np.std(boot), rel=0.25)
