"""The covariance-loss study's grid, paired differences and choice of the best setting, on
hand-made runs; the speed benchmark's --variants parsing."""
import json

import pytest

from crocodile.benchmarks.cli import _variants
from crocodile.benchmarks.covloss_study import best_setting, grid, markdown, summarise
from crocodile.errors import UserError


def _run(setting, seed, auc, dead=0.2, cov=0.01):
    return {"setting": setting, "seed": seed, "train_seconds": 10.0, "epochs_run": 2,
            "metrics": {"overall": {"auc": auc, "gauc": auc - 0.05},
                        "domains": {"0": {"auc": auc + 0.01, "gauc": 0.6}, "4": {"auc": auc - 0.02, "gauc": 0.5}}},
            "diagnostics": {"information_abundance": {"overall": {"item_id": 2.0}},
                            "experts": {"dead_fraction": [dead, dead + 0.1], "unit_std": [0.1, 0.3],
                                        "information_abundance": [3.0, 5.0], "cross_expert_covariance": cov}}}


def test_grid_has_one_lambda_zero_setting_and_rejects_a_clashing_variant():
    settings = grid([32, 0], [0, 0.1, 1.0], {"hinge": {"variance_hinge_weight": 1.0}})
    assert list(settings) == ["lambda=0", "rows=32 lambda=0.1", "rows=batch lambda=0.1", "rows=32 lambda=1",
                              "rows=batch lambda=1", "hinge"]
    assert settings["rows=batch lambda=1"] == {"disentangle_rows": 0, "disentangle_weight": 1.0}
    with pytest.raises(UserError, match="already"):
        grid([32], [1.0], {"rows=32 lambda=1": {}})


def test_paired_differences_and_best_setting_by_hand():
    settings = grid([32, 256], [1.0])
    ref, other = "rows=32 lambda=1", "rows=256 lambda=1"
    runs = [_run(ref, 0, 0.60), _run(ref, 1, 0.62), _run(other, 0, 0.61, dead=0.1), _run(other, 1, 0.65, dead=0.1)]
    summary = summarise(runs, settings, ref)
    paired = summary[other]["paired_vs_reference"]["overall"]["auc"]
    assert paired["mean"] == pytest.approx(0.02)                     # differences 0.01 and 0.03
    assert paired["ci"][0] == pytest.approx(0.02 - 12.7062 * 0.0141421 / 2 ** 0.5, abs=1e-4)
    assert summary[other]["dead_fraction"] == pytest.approx(0.15)     # mean over experts and seeds
    assert summary[other]["dead_fraction_range"] == pytest.approx([0.1, 0.2])
    assert best_setting(summary) == other
    # A setting with fewer seeds cannot win on one lucky seed.
    runs.append(_run("rows=32 lambda=0.5", 0, 0.90))
    settings["rows=32 lambda=0.5"] = {"disentangle_rows": 32, "disentangle_weight": 0.5}
    assert best_setting(summarise(runs, settings, ref)) == other
    report = {"summary": summary, "reference": ref, "best": other, "seeds_done": [0, 1],
              "data": {"rows_validation": 100, "rows_fit": 900}}
    text = markdown(report)
    assert f"**{other}**" in text and "+0.0200 [" in text


def test_speed_variants_are_checked_by_name():
    parsed = _variants(json.dumps({"rows32": ["crocodile", {"disentangle_rows": 32}],
                                   "batch": ["crocodile", {"disentangle_rows": 0}]}))
    assert list(parsed) == ["rows32", "batch"] and parsed["batch"] == ("crocodile", {"disentangle_rows": 0})
    with pytest.raises(UserError, match="'x'"):
        _variants(json.dumps({"x": ["nope", {}]}))
    with pytest.raises(UserError, match="disentangle_rows"):
        _variants(json.dumps({"x": ["crocodile", {"disentangle_rows": 1}]}))
