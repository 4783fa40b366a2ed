"""Paired model comparison over seeds and eval rows, checked by hand and against the metric code."""
import math

import numpy as np
import pytest

from crocodile.benchmarks.paired_analysis import paired_summary
from crocodile.model import comparison, metrics


def _data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 200, n)
    domains = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    x = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(2 * x - 2)))).astype(int)
    return rng, labels, users, domains, x


def test_differences_per_seed_and_the_interval_combine_seed_and_row_noise():
    rng, labels, users, domains, x = _data()
    good = [x + 0.5 * rng.normal(size=x.size) for _ in range(3)]
    bad = [x + 1.5 * rng.normal(size=x.size) for _ in range(3)]
    result = paired_summary({"ref": good, "other": bad}, "ref", labels, users, domains)
    overall = result["models"]["other"]["auc"]["overall"]
    per_seed = [metrics.auc(labels, g) - metrics.auc(labels, b) for g, b in zip(good, bad)]
    np.testing.assert_allclose(overall["per_seed"], per_seed)
    assert overall["diff"] == pytest.approx(np.mean(per_seed))
    rows_se = comparison.auc_contrast(labels, np.vstack(good + bad), [1 / 3] * 3 + [-1 / 3] * 3, users).se
    expected = math.sqrt(rows_se ** 2 + np.var(per_seed, ddof=1) / 3)
    assert overall["se"] == pytest.approx(expected)
    assert overall["ci"][0] == pytest.approx(overall["diff"] - 1.959964 * expected, rel=1e-5)
    assert overall["verdict"] == "better"
    gauc = result["models"]["other"]["gauc"]["overall"]
    assert gauc["per_seed"][0] == pytest.approx(metrics.gauc(labels, good[0], users) - metrics.gauc(labels, bad[0], users))


def test_equal_models_tie_and_domains_are_holm_adjusted():
    rng, labels, users, domains, x = _data(seed=1)
    same = [x + rng.normal(size=x.size) for _ in range(2)]
    result = paired_summary({"ref": same, "copy": [s.copy() for s in same]}, "ref", labels, users, domains)
    for scope in ("overall", "0", "1", "2"):
        assert result["models"]["copy"]["auc"][scope]["diff"] == pytest.approx(0, abs=1e-12)
        assert result["models"]["copy"]["auc"][scope]["verdict"] == "tie"
    other = [x + rng.normal(size=x.size) for _ in range(2)]
    scopes = paired_summary({"ref": same, "b": other}, "ref", labels, users, domains)["models"]["b"]["auc"]
    raw = sorted(scopes[d]["p"] for d in ("0", "1", "2"))
    adjusted = sorted(scopes[d]["p_holm"] for d in ("0", "1", "2"))
    assert adjusted[0] == pytest.approx(min(1.0, 3 * raw[0]))
