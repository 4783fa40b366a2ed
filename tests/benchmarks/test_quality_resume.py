"""A quality run cut short continues with --resume: only missing runs train, nothing stored is rewritten.

Training is replaced by a deterministic scorer (seeded noise around the label) so the
bookkeeping is checked in seconds; the statistics it feeds are the real ones.
"""
import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from crocodile.benchmarks import quality_benchmark
from crocodile.errors import UserError

ROWS = 600


def _arrays(rng, n):
    return {"click": (rng.random(n) < 0.3).astype(np.int64), "user_id": rng.integers(0, 40, n),
            "domain_id_xf": rng.integers(0, 2, n), "item_xf": rng.integers(0, 9, n)}


@pytest.fixture
def fake_training(monkeypatch):
    """prepare_data gives fixed arrays; train_one scores eval rows with noise seeded by (model, seed)."""
    rng = np.random.default_rng(7)
    fit, val, ev = _arrays(rng, ROWS), _arrays(rng, ROWS // 4), _arrays(rng, ROWS)
    raw = pd.DataFrame({"item_id": ev["item_xf"], "click": ev["click"]})
    transformed = SimpleNamespace(train_raw=raw, eval_raw=raw)
    calls = []

    def prepare_data(data_dir, out_dir, max_rows=None):
        return None, None, (fit, val, ev), transformed, 0.5

    def train_one(name, seed, data, *args, **kwargs):
        calls.append((name, seed))
        if len(calls) == fake_training.fail_at:
            raise KeyboardInterrupt("cut short")
        noise = np.random.default_rng([seed, len(name)]).normal(0, 1.0 if name == "mmoe" else 0.6, ROWS)
        probabilities = 1 / (1 + np.exp(-(ev["click"] + noise)))
        metrics = quality_benchmark.score(ev["click"], probabilities, ev["user_id"], ev["domain_id_xf"])
        return {"model": name, "seed": seed, "train_seconds": 1.0, "epochs_run": 2, "epoch_cap": 4,
                "hit_epoch_cap": False, "parameters": 10, "metrics": metrics, "eval_probabilities": probabilities,
                "diagnostics": {"information_abundance": {"num_embedding_sets": 1, "overall": {"item_id": 1.0}},
                                "experts": None}}

    monkeypatch.setattr(quality_benchmark, "prepare_data", prepare_data)
    monkeypatch.setattr(quality_benchmark, "train_one", train_one)
    fake_training.fail_at = None
    fake_training.calls = calls
    return fake_training


def _run(out, **kwargs):
    settings = {"models": ["crocodile", "mmoe"], "seeds": 3, "epochs": 4, **kwargs}
    return quality_benchmark.run(str(out), settings.pop("models"), settings.pop("seeds"), str(out / "q"),
                                 **settings)


def test_resume_trains_only_missing_runs_and_matches_an_uninterrupted_run(tmp_path, fake_training):
    whole = _run(tmp_path / "whole")
    fake_training.calls.clear()

    fake_training.fail_at = 4                      # seed 0 done, seed 1 crocodile done, mmoe cut off
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut")
    saved = tmp_path / "cut" / "q" / "predictions" / "crocodile-seed1.npy"
    before = saved.read_bytes()
    fake_training.calls.clear()
    fake_training.fail_at = None

    resumed = _run(tmp_path / "cut", resume=True)
    assert fake_training.calls == [("mmoe", 1), ("crocodile", 2), ("mmoe", 2)]
    assert saved.read_bytes() == before
    assert [(r["model"], r["seed"]) for r in resumed["runs"]] == [(r["model"], r["seed"]) for r in whole["runs"]]
    ours, theirs = resumed["paired"]["models"]["mmoe"]["auc"], whole["paired"]["models"]["mmoe"]["auc"]
    assert ours["overall"]["diff"] == pytest.approx(theirs["overall"]["diff"], abs=1e-6)
    assert ours["overall"]["ci"] == pytest.approx(theirs["overall"]["ci"], abs=1e-6)
    assert resumed["parts"] == 2
    parts = [json.loads(line) for line in open(tmp_path / "cut" / "q" / "parts.jsonl")]
    assert [p["resumed_with_runs"] for p in parts] == [0, 3]
    # Time of both parts: two transforms plus every run's own wall time at least.
    runs = [json.loads(line) for line in open(tmp_path / "cut" / "q" / "runs.jsonl")]
    assert len(runs) == 6
    assert resumed["total_seconds"] >= 2 * 0.5 + sum(r["wall_seconds"] for r in runs[:3])


def test_resume_refuses_changed_settings_and_a_plain_rerun_refuses_the_folder(tmp_path, fake_training):
    fake_training.fail_at = 2
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    fake_training.fail_at = None
    with pytest.raises(UserError, match="pass --resume"):
        _run(tmp_path)
    with pytest.raises(UserError, match="seeds: was 3, now 5"):
        _run(tmp_path, seeds=5, resume=True)
    with pytest.raises(UserError, match="no run to continue"):
        _run(tmp_path / "elsewhere", resume=True)
    assert os.listdir(tmp_path / "q" / "predictions") == ["crocodile-seed0.npy"]
