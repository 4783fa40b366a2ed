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


def test_summary_and_markdown_show_the_ladder_and_epoch_cap_hits():
    runs = [_run("crocodile", 0, 0.70), _run("crocodile", 1, 0.80), _run("mmoe", 0, 0.69), _run("mmoe", 1, 0.78)]
    for run, hit in zip(runs, (True, False, False, False)):
        run.update(hit_epoch_cap=hit, epochs_run=4 if hit else 2, parameters=10, train_seconds=3.0)
    summary = summarise(runs, ["crocodile", "mmoe"], ladder=None)
    assert summary["models"]["mmoe"]["0"]["auc"]["mean"] == pytest.approx(0.635)
    assert summary["training"]["crocodile"]["hit_epoch_cap"] == 1
    assert summary["training"]["mmoe"]["hit_epoch_cap"] == 0
    ladder = {"ceiling (p_relevance)": {"overall": {"auc": 0.9, "gauc": 0.8}, "domains": {"0": {"auc": 0.85, "gauc": 0.8}}}}
    paired = {"reference": "crocodile", "models": {"mmoe": {
        "auc": {"overall": {"diff": 0.015, "ci": [0.005, 0.025], "verdict": "better"},
                "0": {"diff": -0.01, "ci": [-0.03, 0.01], "verdict": "tie"}},
        "gauc": {"overall": {}, "0": {}}}}}
    report = {"summary": summary, "ladder": ladder, "paired": paired,
              "data": {"dir": "d", "rows_fit": 1, "rows_validation": 1, "rows_eval": 1,
                       "eval_rows_by_domain": {"0": 1}, "eval_clicks_by_domain": {"0": 1}},
              "settings": {"seeds": 2, "epoch_cap": 4}, "transform_seconds": 1.0}
    text = markdown(report)
    assert "| *ceiling (p_relevance)* | 0.9000 | 0.8500 |" in text
    assert "| mmoe | +0.0150 [+0.0050, +0.0250] **+** | -0.0100 [-0.0300, +0.0100] |" in text
    assert "| crocodile | 10 | 2 | 1 | 4, 2 | 3 |" in text


def test_cli_rejects_unknown_models_and_bad_hparams(tmp_path, capsys):
    assert main(["benchmark", "quality", "--data", str(tmp_path), "--models", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["benchmark", "quality", "--data", str(tmp_path), "--out", str(tmp_path),
                 "--hparams", '{"bogus": 1}']) == 2
    assert "bogus" in capsys.readouterr().err


def test_read_jsonl_leaves_out_a_torn_last_line_and_names_any_other_bad_line(tmp_path):
    from crocodile.benchmarks.benchmark_report import read_jsonl
    from crocodile.errors import UserError

    assert read_jsonl(str(tmp_path / "absent.jsonl")) == []
    path = tmp_path / "runs.jsonl"
    path.write_text('{"model": "a", "seed": 0}\n\n{"model": "b", "seed": 0}\n{"model": "c", "se')
    assert read_jsonl(str(path)) == [{"model": "a", "seed": 0}, {"model": "b", "seed": 0}]
    path.write_text('{"model": "a", "seed": 0}\n{"model": "b", "se\n{"model": "c", "seed": 0}\n')
    with pytest.raises(UserError, match="runs.jsonl: line 2 is not JSON"):
        read_jsonl(str(path))
