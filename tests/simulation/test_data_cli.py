"""`crocodile data generate|describe|convert` end to end through the CLI entry point."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from crocodile import cli
from crocodile.model import features, metrics
from crocodile.model.features import FeatureConfig

SMALL = ["--users", "1500", "--items", "400", "--quiet"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gen") / "csv")
    assert cli.main(["data", "generate", "--out", out, "--impressions", "30005", "--seed", "5", *SMALL]) == 0
    return out


def test_generate_writes_the_documented_layout(csv_dir):
    assert sorted(os.listdir(csv_dir)) == ["feature_config.json", "ground_truth", "logs", "world"]
    assert FeatureConfig.load(os.path.join(csv_dir, "feature_config.json")) == features.WORLD_FEATURES
    logs = pd.read_csv(os.path.join(csv_dir, "logs", "part-00000.csv"))
    assert len(logs) == 30005
    assert {"user_id", "item_id", "domain_id", "click", "purchase", "price", "position", "request_id",
            "timestamp", "user_segment", "user_region", "item_category"} == set(logs.columns)
    assert logs["user_id"].str.match(r"^u\d{6}$").all() and logs["item_id"].str.match(r"^i\d{6}$").all()
    assert logs["click"].isin([0, 1]).all() and logs["domain_id"].between(0, 4).all()
    assert "p_click" not in logs.columns  # ground truth stays out of the logs
    truth = pd.read_csv(os.path.join(csv_dir, "ground_truth", "part-00000.csv"))
    assert list(truth.columns) == ["request_id", "position", "p_click", "p_relevance", "p_purchase_given_click",
                                   "is_random_exposure"]
    assert (truth["request_id"] == logs["request_id"]).all()
    with open(os.path.join(csv_dir, "logs", "part-00000.csv")) as f:
        assert f.readline().strip() == ",".join(logs.columns)  # plain header for TFX CsvExampleGen


def test_describe_oracle_matches_scoring_with_true_probabilities(csv_dir, capsys):
    code, out, _ = run(capsys, "data", "describe", csv_dir, "--json")
    assert code == 0
    summary = json.loads(out)
    logs = pd.read_csv(os.path.join(csv_dir, "logs", "part-00000.csv"))
    truth = pd.read_csv(os.path.join(csv_dir, "ground_truth", "part-00000.csv"))
    joined = logs.merge(truth, on=["request_id", "position"], validate="one_to_one")
    assert summary["overall"]["oracle_auc"] == pytest.approx(metrics.auc(joined["click"], joined["p_click"]))
    assert summary["overall"]["oracle_gauc"] == pytest.approx(
        metrics.gauc(joined["click"], joined["p_click"], joined["user_id"]))
    for d, row in summary["domains"].items():
        part = joined[joined["domain_id"] == int(d)]
        assert row["impressions"] == len(part) and row["users"] == part["user_id"].nunique()
        assert row["ctr"] == pytest.approx(part["click"].mean())
        assert row["purchase_rate"] == pytest.approx(part["purchase"].mean())
        assert row["oracle_auc"] == pytest.approx(metrics.auc(part["click"], part["p_click"]))
        assert row["ceiling_auc"] == pytest.approx(metrics.auc(part["click"], part["p_relevance"]))
        assert row["median_impressions_per_user"] == part.groupby("user_id").size().median()
    assert summary["overall"]["ceiling_gauc"] == pytest.approx(
        metrics.gauc(joined["click"], joined["p_relevance"], joined["user_id"]))
    # Position matters in this world, so the position-blind ceiling sits below the p_click oracle.
    assert summary["overall"]["ceiling_auc"] < summary["overall"]["oracle_auc"]
    assert summary["overall"]["impressions"] == 30005
    code, table, _ = run(capsys, "data", "describe", csv_dir)
    assert code == 0 and "ceiling AUC" in table and "p_click AUC" in table
    assert len(table.splitlines()) == 11  # title, header, 5 domains, all, 3 notes


def test_refuses_to_overwrite_and_bad_flags(csv_dir, capsys, tmp_path):
    before = sorted(os.listdir(csv_dir))
    code, _, err = run(capsys, "data", "generate", "--out", csv_dir, "--impressions", "100", *SMALL)
    assert code == 2 and "already exists" in err and sorted(os.listdir(csv_dir)) == before
    code, _, err = run(capsys, "data", "generate", "--out", str(tmp_path / "x"), "--impressions", "0")
    assert code == 2 and "--impressions" in err and not (tmp_path / "x").exists()
    code, _, err = run(capsys, "data", "describe", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err
    code, _, err = run(capsys, "data", "convert", "--format", "criteo", "--input", "a.csv", "--out", str(tmp_path / "c"))
    assert code == 2 and "criteo" in err


@pytest.mark.slow  # imports TensorFlow (about 10 s here)
def test_tfrecord_shards_and_saved_world_reproduce_the_csv_data(csv_dir, capsys, tmp_path):
    out = str(tmp_path / "tfr")
    code, _, _ = run(capsys, "data", "generate", "--out", out, "--impressions", "30005", "--seed", "5",
                     "--format", "tfrecord", "--shards", "3", "--world", os.path.join(csv_dir, "world"), "--quiet")
    assert code == 0
    assert sorted(os.listdir(os.path.join(out, "logs"))) == [f"part-0000{i}.tfrecord.gz" for i in range(3)]
    import tensorflow as tf

    record = next(iter(tf.data.TFRecordDataset(os.path.join(out, "logs", "part-00000.tfrecord.gz"),
                                               compression_type="GZIP")))
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    assert feature["user_id"].WhichOneof("kind") == "bytes_list"
    assert feature["domain_id"].WhichOneof("kind") == "int64_list"
    assert feature["price"].WhichOneof("kind") == "float_list"
    _, csv_json, _ = run(capsys, "data", "describe", csv_dir, "--json")
    _, tfr_json, _ = run(capsys, "data", "describe", out, "--json")
    csv_summary, tfr_summary = json.loads(csv_json), json.loads(tfr_json)
    assert tfr_summary["format"] == "tfrecord"
    for key in ("overall", "domains"):
        assert tfr_summary[key] == csv_summary[key]  # same world + seed -> the same impressions


def test_same_seed_same_bytes(csv_dir, tmp_path):
    out = str(tmp_path / "again")
    assert cli.main(["data", "generate", "--out", out, "--impressions", "30005", "--seed", "5", *SMALL]) == 0
    for sub in ("logs", "ground_truth"):
        with open(os.path.join(csv_dir, sub, "part-00000.csv"), "rb") as a, open(os.path.join(out, sub, "part-00000.csv"), "rb") as b:
            assert a.read() == b.read()
    np.testing.assert_array_equal(np.load(os.path.join(csv_dir, "world", "world_arrays.npz"))["item_price"],
                                  np.load(os.path.join(out, "world", "world_arrays.npz"))["item_price"])


def test_generate_with_a_preset_records_it_and_flags_apply_on_top(capsys, tmp_path):
    out = str(tmp_path / "preset")
    code, _, _ = run(capsys, "data", "generate", "--preset", "null", "--out", out, "--impressions", "2000",
                     "--users", "300", "--quiet")
    assert code == 0
    with open(os.path.join(out, "world", "world_config.json")) as f:
        config = json.load(f)
    assert config["preset"] == "null" and config["num_conflict_dims"] == 0 and config["num_users"] == 300
    assert len(pd.read_csv(os.path.join(out, "logs", "part-00000.csv"))) == 2000
    code, _, err = run(capsys, "data", "generate", "--preset", "nope", "--out", str(tmp_path / "n"))
    assert code == 2 and "demo, benchmark, null" in err and not (tmp_path / "n").exists()
    code, _, err = run(capsys, "data", "generate", "--preset", "demo", "--world", os.path.join(out, "world"),
                       "--out", str(tmp_path / "w"))
    assert code == 2 and "--preset" in err
