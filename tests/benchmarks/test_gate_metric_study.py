"""The gate-metric study's statistics: the oracle lift's ratio and error, and the agreement counts."""
import numpy as np
import pytest

from crocodile.benchmarks import gate_metric_study as study
from crocodile.errors import UserError


def test_ratio_lift_and_its_delta_method_error_by_hand():
    lift, se = study.ratio_lift(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0]))
    # 9/6 - 1; linearised terms (c - 1.5 b) / 2 = [0.25, -0.5, 0.25]: sample sd 0.4330, / sqrt(3)
    assert lift == pytest.approx(0.5)
    assert se == pytest.approx(np.sqrt(0.1875) / np.sqrt(3))


def test_ratio_lift_error_shrinks_like_one_over_root_n_on_resampled_traffic():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.1, 40000)
    cand = base * 1.05 + rng.normal(0, 0.02, base.size)
    _, se = study.ratio_lift(base, cand)
    lifts = [study.ratio_lift(base[i], cand[i])[0] for i in (rng.integers(0, base.size, base.size) for _ in range(200))]
    assert se == pytest.approx(np.std(lifts), rel=0.15)  # bootstrap spread of the same statistic


def _record(domain, auc, gauc, lift, se=0.01):
    def interval(values):
        return None if values is None else dict(zip(("diff", "ci_low", "ci_high"), values))
    return {"baseline": "a", "candidate": "b", "domain": domain, "auc": interval(auc), "gauc": interval(gauc),
            "oracle_ctr_lift": lift, "oracle_ctr_lift_se": se}


def test_agreement_counts_only_cells_where_both_are_clear():
    records = [
        _record(0, (0.01, 0.005, 0.015), (0.02, 0.01, 0.03), 0.05),       # both agree
        _record(4, (-0.03, -0.05, -0.01), (0.03, 0.01, 0.05), 0.03),      # AUC contradicts, gAUC agrees
        _record(2, (-0.01, -0.03, 0.01), (-0.02, -0.04, -0.001), 0.015),  # oracle not clear (1.5 se)
        _record(3, (0.02, 0.01, 0.03), None, -0.04),                      # AUC contradicts; no gAUC
    ]
    summary = study.summarise(records)
    assert (summary["auc"]["both_decided_agree"], summary["auc"]["both_decided_contradict"]) == (1, 2)
    assert (summary["gauc"]["both_decided_agree"], summary["gauc"]["both_decided_contradict"]) == (2, 0)
    assert summary["auc"]["cells"] == 4 and summary["gauc"]["cells"] == 3
    assert any("domain 4" in line and "-0.0300" in line for line in summary["auc"]["contradictions"])
    # ranks of the AUC diffs (3, 1, 2, 4) against the lifts' (4, 3, 2, 1): 1 - 6 * 14 / (4 * 15)
    assert summary["auc"]["spearman_with_oracle_lift"] == pytest.approx(-0.4)


@pytest.mark.parametrize("value, problem", [("mmoe", "NAME=SAVED_MODEL_DIR"), ("a=/nonexistent", "no saved_model.pb")])
def test_bad_model_arguments_are_named(value, problem):
    with pytest.raises(UserError, match=problem):
        study.parse_models([value, "b=/also-missing"])
