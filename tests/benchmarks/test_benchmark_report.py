"""Summary statistics of the quality benchmark and the CLI's handling of bad input."""
import math

import pytest

from crocodile.cli import main
from crocodile.benchmarks.benchmark_report import markdown, mean_and_interval, summarise


def _run(model, seed, auc, gauc=0.6):
    domain = {"auc": auc - 0.1, "gauc": gauc, "n": 10}
    return {"model": model, "seed": seed,
            "metrics": {"overall": {"auc": auc, "gauc": gauc}, "domains": {"0": domain}},
            "diagnostics": {"information_abundance": {"num_embedding_sets": 1, "overall": {"item_id": 3.0}},
                            "experts": None}}


def test_t_interval_by_hand():
    stat = mean_and_interval([0.01, 0.03])
    # mean 0.02, sd 0.01414, t(0.975, 1) = 12.706 -> half width 12.706 * 0.01414 / sqrt(2) = 0.12706
    assert stat["mean"] == pytest.approx(0.02)
    assert stat["ci"][1] - stat["mean"] == pytest.approx(0.12706, rel=1e-3)
    single = mean_and_interval([0.5])
    assert single["n"] == 1 and math.isnan(single["ci"][0])


def test_paired_differences_are_per_seed():
    runs = [_run("crocodile", 0, 0.70), _run("crocodile", 1, 0.80), _run("mmoe", 0, 0.69), _run("mmoe", 1, 0.78)]
    summary = summarise(runs, ["crocodile", "mmoe"], oracle=None)
    paired = summary["paired_vs_crocodile"]["mmoe"]["overall"]["auc"]
    assert paired["mean"] == pytest.approx(-0.015)          # (-0.01 + -0.02) / 2, not the unpaired spread
    assert summary["models"]["mmoe"]["0"]["auc"]["mean"] == pytest.approx(0.635)
    report = {"summary": summary, "oracle": {"overall": {"auc": 0.9, "gauc": 0.8},
                                             "domains": {"0": {"auc": 0.85, "gauc": 0.8}}},
              "data": {"dir": "d", "rows_fit": 1, "rows_validation": 1, "rows_eval": 1,
                       "eval_rows_by_domain": {"0": 1}}, "settings": {"seeds": 2}, "transform_seconds": 1.0}
    text = markdown(report)
    assert "| oracle (true p_click) | 0.9000 | 0.8500 |" in text and "| mmoe | -0.0150" in text


def test_cli_rejects_unknown_models_and_bad_hparams(tmp_path, capsys):
    assert main(["benchmark", "quality", "--data", str(tmp_path), "--models", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["benchmark", "quality", "--data", str(tmp_path), "--out", str(tmp_path),
                 "--hparams", '{"bogus": 1}']) == 2
    assert "bogus" in capsys.readouterr().err
