"""AUC / gAUC against hand-computed values and brute-force pairwise implementations."""
import math

import numpy as np
import pytest

from crocodile.model import metrics


def pairwise_auc(labels, scores):
    """P(score+ > score-) + 0.5 P(tie), by enumerating every positive-negative pair."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def pairwise_gauc(labels, scores, groups):
    total, weight = 0.0, 0
    for g in dict.fromkeys(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g]
        value = pairwise_auc([labels[i] for i in idx], [scores[i] for i in idx])
        if not math.isnan(value):
            total += value * len(idx)
            weight += len(idx)
    return total / weight if weight else math.nan


def test_hand_computed_auc_with_ties():
    # pairs (pos, neg): (0.8,0.2) win, (0.8,0.5) win, (0.5,0.2) win, (0.5,0.5) tie -> 3.5 / 4
    assert metrics.auc([1, 0, 1, 0], [0.8, 0.2, 0.5, 0.5]) == pytest.approx(0.875)
    assert metrics.auc([1, 1, 0], [0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert math.isnan(metrics.auc([1, 1], [0.1, 0.2]))
    assert math.isnan(metrics.auc([], []))


def test_hand_computed_gauc():
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.2, 0.4, 0.3, 0.6]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    # a: AUC 1 (3 rows); b: AUC 0 (2 rows); c: single class, skipped -> (3*1 + 2*0) / 5
    value, eligible = metrics.gauc_with_count(labels, scores, groups)
    assert value == pytest.approx(0.6) and eligible == 2
    assert math.isnan(metrics.gauc([1, 1, 0], [0.1, 0.2, 0.3], ["a", "a", "b"]))


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_bruteforce_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 400
    labels = (rng.random(n) < 0.3).astype(int)
    scores = rng.integers(0, 6, n) / 5.0  # few distinct values: many ties
    groups = rng.integers(0, 40, n)       # some groups single-class, some of size 1
    groups[:10] = 99                       # an all-negative group
    labels[:10] = 0
    assert metrics.auc(labels, scores) == pytest.approx(pairwise_auc(labels.tolist(), scores.tolist()), abs=1e-12)
    expected = pairwise_gauc(labels.tolist(), scores.tolist(), groups.tolist())
    assert metrics.gauc(labels, scores, groups) == pytest.approx(expected, abs=1e-12)
    assert metrics.gauc(labels, scores, groups.astype(str)) == pytest.approx(expected, abs=1e-12)


def test_per_domain_metrics_matches_masked_calls():
    rng = np.random.default_rng(7)
    n = 3000
    labels = (rng.random(n) < 0.2).astype(int)
    scores = rng.random(n) + 0.3 * labels
    users = rng.integers(0, 100, n)
    domains = rng.integers(0, 3, n)
    result = metrics.per_domain_metrics(labels, scores, users, domains)
    assert result["overall"]["auc"] == pytest.approx(metrics.auc(labels, scores))
    assert result["overall"]["gauc"] == pytest.approx(metrics.gauc(labels, scores, users))
    assert result["overall"]["n"] == n
    for d in range(3):
        m = domains == d
        part = result["domains"][d]
        assert part["n"] == m.sum() and part["n_positive"] == labels[m].sum()
        assert part["auc"] == pytest.approx(metrics.auc(labels[m], scores[m]))
        assert part["gauc"] == pytest.approx(metrics.gauc(labels[m], scores[m], users[m]))
        assert part["n_eligible_users"] == metrics.gauc_with_count(labels[m], scores[m], users[m])[1]


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="length"):
        metrics.gauc([0, 1], [0.1, 0.2], ["a"])


def test_gauc_scales_to_millions_of_rows():
    import time

    rng = np.random.default_rng(1)
    n = 2_000_000
    labels = (rng.random(n) < 0.05).astype(np.int64)
    scores = rng.random(n) + 0.2 * labels
    users = rng.integers(0, 50_000, n)
    started = time.perf_counter()
    value = metrics.gauc(labels, scores, users)
    assert time.perf_counter() - started < 10.0  # about 1 s here; generous for a shared 2-core machine
    assert value == pytest.approx(1 - 0.8 ** 2 / 2, abs=0.01)  # P(U + 0.2 > U')
