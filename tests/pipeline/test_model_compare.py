"""The blessing decision of `crocodile model compare` and the BlessingGate, on hand-made rows.

The statistic itself (clustered DeLong, Holm) is tested in tests/model; here: the
absolute check, the no-baseline case, the status of each domain, the baseline lookup under
a push destination, and reading eval rows from logs with their exact types.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from crocodile.errors import UserError
from crocodile.model.comparison import INSUFFICIENT, paired_auc
from crocodile.pipeline import configs, model_compare
from crocodile.pipeline.model_compare import EvalRows


def _rows(n=6000, seed=0, domain_p=(0.7, 0.25, 0.05)):
    rng = np.random.default_rng(seed)
    domains = rng.choice(len(domain_p), n, p=domain_p)
    signal = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(signal - 2.5)))).astype(np.int64)
    users = np.array([f"u{u}" for u in rng.integers(0, n // 4, n)])
    return EvalRows(np.empty(0, dtype=object), labels, domains.astype(np.int64), users), signal, rng


def test_first_run_has_only_the_absolute_check():
    rows, signal, rng = _rows()
    candidate = signal + rng.normal(size=signal.size)
    good = model_compare.compare(rows, candidate, None, domain_ids=[0, 1, 2, 3])
    assert good["blessed"] and not good["has_baseline"] and good["reasons"] == []
    assert good["domains"]["3"]["status"] == INSUFFICIENT and good["domains"]["3"]["clicks"] == 0
    assert good["domains"]["0"]["status"] == model_compare.NO_BASELINE
    # The candidate-only AUC is the plain AUC of the domain's rows.
    on = rows.domains == 0
    reference = paired_auc(rows.labels[on], candidate[on], candidate[on]).baseline_auc
    assert good["domains"]["0"]["candidate_auc"] == pytest.approx(reference, abs=1e-12)
    inverted = model_compare.compare(rows, -signal, None)
    assert not inverted["blessed"] and "absolute lower bound 0.5" in inverted["reasons"][0]


def test_equal_candidate_is_blessed_and_a_domain_made_worse_is_named():
    rows, signal, rng = _rows(n=20000)
    baseline = signal + rng.normal(scale=0.5, size=signal.size)
    same = model_compare.compare(rows, baseline.copy(), baseline)
    assert same["blessed"] and same["overall"]["diff"] == 0
    assert {r["status"] for r in same["domains"].values()} == {"ok"}

    worse = baseline.copy()
    on = rows.domains == 1
    worse[on] = rng.normal(size=int(on.sum()))       # domain 1 ranked at random
    decision = model_compare.compare(rows, worse, baseline)
    assert not decision["blessed"]
    assert decision["domains"]["1"]["status"] == "significantly worse"
    assert decision["domains"]["0"]["status"] == "ok"
    assert any(reason.startswith("domain 1:") for reason in decision["reasons"])
    text = model_compare.describe(decision)
    assert "blessed: no" in text and "domain 1" in text and "significantly worse" in text


def test_min_clicks_decides_which_domains_are_tested():
    rows, signal, rng = _rows(n=20000)
    clicks = {d: int(rows.labels[rows.domains == d].sum()) for d in range(3)}
    rule = configs.blessing_rule(min_clicks=clicks[2] + 1)
    decision = model_compare.compare(rows, signal, signal, rule=rule)
    assert decision["domains"]["2"]["status"] == INSUFFICIENT
    assert decision["domains"]["2"]["reason"] == f"{clicks[2]} clicks < {clicks[2] + 1} needed"
    assert decision["insufficient_evidence"] == [2]
    assert decision["rule"]["min_clicks"] == clicks[2] + 1


def test_baseline_is_the_highest_pushed_version(tmp_path):
    base = tmp_path / "serving" / "crocodile"
    assert model_compare.latest_version_dir(str(base)) is None           # nothing pushed yet
    for version, complete in ((1700000000, True), (1700000500, True), (1700000900, False)):
        os.makedirs(base / str(version))
        if complete:  # the Pusher copies saved_model.pb last: a version without it is not served
            (base / str(version) / "saved_model.pb").write_bytes(b"")
    os.makedirs(base / "tmp-not-a-version")
    assert model_compare.latest_version_dir(str(base)) == f"{base}/1700000500"
    assert model_compare.saved_model_dir(str(base)) == f"{base}/1700000500"
    with pytest.raises(UserError, match="no saved_model.pb"):
        model_compare.saved_model_dir(str(tmp_path / "empty"))


def test_csv_and_tfrecord_logs_become_the_same_typed_examples(tmp_path, canonical_logs):
    data = canonical_logs(300)
    rows = model_compare.data_folder_rows(data)
    assert len(rows) == 300 and set(np.unique(rows.labels)) <= {0, 1}
    example = tf.train.Example.FromString(rows.serialized[0])
    features = example.features.feature
    assert features["user_id"].bytes_list.value[0].decode() == rows.users[0]
    assert features["domain_id"].int64_list.value[0] == rows.domains[0]
    assert features["price"].float_list.value and features["item_category"].bytes_list.value
    # The same rows as a TFRecord data folder: records are used as they are.
    os.makedirs(tmp_path / "tfr" / "logs")
    path = str(tmp_path / "tfr" / "logs" / "part-00000.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for record in rows.serialized:
            writer.write(record)
    again = model_compare.data_folder_rows(str(tmp_path / "tfr"))
    assert list(again.serialized) == list(rows.serialized)
    np.testing.assert_array_equal(again.users, rows.users)
    np.testing.assert_array_equal(again.domains, rows.domains)


def test_bad_rows_are_named():
    example = tf.train.Example()
    example.features.feature["click"].int64_list.value.append(2)
    example.features.feature["domain_id"].int64_list.value.append(0)
    example.features.feature["user_id"].bytes_list.value.append(b"u")
    with pytest.raises(UserError, match="'click' must be 0 or 1"):
        model_compare.rows_from_records([example.SerializeToString()])
    del example.features.feature["user_id"]
    example.features.feature["click"].int64_list.value[0] = 1
    with pytest.raises(UserError, match="eval row 0: column 'user_id' must hold exactly one value, found 0"):
        model_compare.rows_from_records([example.SerializeToString()])
    example.features.feature["user_id"].int64_list.value.append(42)  # any list type: ids become strings
    typed_otherwise = model_compare.rows_from_records([example.SerializeToString()])
    assert typed_otherwise.users.tolist() == ["42"] and typed_otherwise.labels.tolist() == [1]
    two_clicks = tf.train.Example()
    two_clicks.CopyFrom(example)
    two_clicks.features.feature["click"].int64_list.value.append(0)
    with pytest.raises(UserError, match="eval row 1: column 'click' must hold exactly one value, found 2"):
        model_compare.rows_from_records([example.SerializeToString(), two_clicks.SerializeToString()])
    float_click = tf.train.Example()
    float_click.CopyFrom(example)
    del float_click.features.feature["click"]
    float_click.features.feature["click"].float_list.value.append(1.0)
    with pytest.raises(UserError, match="wrong type.*click"):
        model_compare.rows_from_records([example.SerializeToString(), float_click.SerializeToString()])


def _brute_gauc(labels, scores, users):
    """Row-weighted mean over users with both labels of the pairwise AUC (ties 1/2), by brute force."""
    total, weight = 0.0, 0
    for user in np.unique(users):
        mine = users == user
        pos, neg = scores[mine][labels[mine] == 1], scores[mine][labels[mine] == 0]
        if len(pos) and len(neg):
            wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
            total += mine.sum() * wins / (len(pos) * len(neg))
            weight += mine.sum()
    return total / weight


def test_gauc_beside_the_decision_matches_a_brute_force_gauc():
    rows, signal, rng = _rows(n=1500)
    baseline = signal + rng.normal(size=signal.size)
    # Candidate: a per-user offset (changes the pooled AUC, not any user's own ranking) on a better score.
    offsets = {u: rng.normal(scale=3.0) for u in np.unique(rows.users)}
    candidate = signal + 0.3 * rng.normal(size=signal.size) + np.array([offsets[u] for u in rows.users])
    decision = model_compare.compare(rows, candidate, baseline)
    gauc = decision["gauc"]["overall"]
    assert gauc["candidate_gauc"] == pytest.approx(_brute_gauc(rows.labels, candidate, rows.users), abs=1e-12)
    assert gauc["baseline_gauc"] == pytest.approx(_brute_gauc(rows.labels, baseline, rows.users), abs=1e-12)
    assert gauc["diff"] == pytest.approx(gauc["candidate_gauc"] - gauc["baseline_gauc"], abs=1e-12)
    assert gauc["ci_low"] < gauc["diff"] < gauc["ci_high"]
    on = rows.domains == 1
    assert decision["gauc"]["domains"]["1"]["candidate_gauc"] == pytest.approx(
        _brute_gauc(rows.labels[on], candidate[on], rows.users[on]), abs=1e-12)
    assert "gAUC (per-user ranking; information, not part of the rule):" in model_compare.describe(decision)
    assert "gauc" not in model_compare.compare(rows, candidate, None)


def test_a_gauc_rule_decides_and_prints_in_gauc_and_keeps_the_absolute_auc_check():
    rows, signal, rng = _rows(n=20000)
    baseline = signal + rng.normal(scale=0.5, size=signal.size)
    worse = baseline.copy()
    on = rows.domains == 1
    worse[on] = rng.normal(size=int(on.sum()))       # domain 1 ranked at random
    rule = configs.blessing_rule(statistic="gauc")
    decision = model_compare.compare(rows, worse, baseline, rule=rule)
    assert decision["statistic"] == "gauc" and decision["rule"]["statistic"] == "gauc"
    assert not decision["blessed"] and decision["domains"]["1"]["status"] == "significantly worse"
    assert "gauc" not in decision  # the decision itself is in gAUC
    assert decision["absolute"]["overall_auc"] == pytest.approx(paired_auc(rows.labels, worse, worse).baseline_auc)
    text = model_compare.describe(decision)
    assert "by > 0.01 gAUC" in text and "candidate gAUC" in text and "domain 1: gAUC" in text
    assert "information, not part of the rule" not in text
    first = model_compare.compare(rows, worse, None, rule=rule)  # no baseline: only the absolute AUC check
    assert first["blessed"] and "candidate AUC" in model_compare.describe(first)
