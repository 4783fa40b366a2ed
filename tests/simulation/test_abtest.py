"""The A/B simulator with tiny real SavedModels: oracle lift, A/A, assignment, and the offline CLI."""
import argparse
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from crocodile.serving.examples import make_example
from crocodile.serving.policy import CanaryPolicy
from crocodile.simulation import ab_scorers, abtest, abtest_cli, stats
from crocodile.simulation.ab_reference_models import save_world_ranker
from crocodile.simulation.world import World, WorldConfig

SHARES = {0: 0.5, 1: 0.2, 2: 0.8, 3: 0.0, 4: 1.0}
# Noise on every parameter of the world's click model: 0 ranks like the oracle; 4 is close to random.
RANDOM_NOISE = 4.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("abtest")
    world = World.create(WorldConfig(seed=3, num_users=600, num_items=300))
    world.save(str(root / "data" / "world"))
    oracle = save_world_ranker(world, str(root / "models" / "crocodile" / "2"), noise=0.0)
    random = save_world_ranker(world, str(root / "models" / "crocodile" / "1"), noise=RANDOM_NOISE, seed=5)
    policy = CanaryPolicy("test", "salt", 0.5, dict(SHARES))
    return {"root": root, "world": world, "oracle": oracle, "random": random, "policy": policy}


def test_concatenated_examples_parse_like_examples_built_field_by_field(setup):
    world = setup["world"]
    encoder = ab_scorers.ExampleEncoder(world)
    user, domain, candidates = np.array([4, 7]), np.array([2, 0]), np.array([[1, 9, 3], [5, 5, 2]])
    fast = encoder.encode(user, domain, candidates)
    slow = []
    for r in range(2):
        for item in candidates[r]:
            features = {k: v[0] for k, v in world.user_features(user[r:r + 1]).items()}
            features.update({k: v[0] for k, v in world.item_features([item]).items()})
            features["domain_id"] = int(domain[r])
            slow.append(make_example(features).SerializeToString())
    spec = {"user_id": tf.io.FixedLenFeature([], tf.string), "user_region": tf.io.FixedLenFeature([], tf.string),
            "item_category": tf.io.FixedLenFeature([], tf.string), "price": tf.io.FixedLenFeature([], tf.float32),
            "domain_id": tf.io.FixedLenFeature([], tf.int64)}
    parsed_fast, parsed_slow = tf.io.parse_example(fast.tolist(), spec), tf.io.parse_example(slow, spec)
    for key in spec:
        np.testing.assert_array_equal(parsed_fast[key].numpy(), parsed_slow[key].numpy())


def test_reference_model_with_no_noise_scores_the_true_relevance(setup):
    world = setup["world"]
    user, domain, candidates = abtest.sample_traffic(world, np.random.default_rng(0), 50, 10)
    encoded = ab_scorers.ExampleEncoder(world).encode(user, domain, candidates)
    scores = ab_scorers.SavedModelScorer(setup["oracle"])(encoded)
    truth = world.relevance_probability(user[:, None], candidates, domain[:, None])
    np.testing.assert_allclose(scores.reshape(truth.shape), truth, rtol=1e-4)


def test_oracle_lift_of_true_relevance_over_random_matches_a_direct_computation(setup):
    world, policy = setup["world"], setup["policy"]
    scorer = ab_scorers.OfflineScorer(world, policy, setup["random"], setup["oracle"])
    result = abtest.simulate(world, scorer, 2000, seed=11, progress=False)
    # Independent: the same traffic (same seed stream), ranked by the world's true relevance,
    # expected CTR = sum of examination(k) * relevance of the k-th best item.
    traffic_rng = np.random.default_rng(np.random.SeedSequence(11).spawn(3)[0])
    user, domain, candidates = abtest.sample_traffic(world, traffic_rng, 2000, world.config.candidates_per_request)
    np.testing.assert_array_equal(result.domain, domain)
    k = world.config.slate_size
    relevance = -np.sort(-world.relevance_probability(user[:, None], candidates, domain[:, None]), axis=1)[:, :k]
    expected_ctr = float(np.mean(relevance * world.examination_probability(np.arange(k))) )
    oracle = abtest.oracle_lifts(result)
    assert oracle["overall"]["ctr_canary"] == pytest.approx(expected_ctr, rel=1e-6)
    assert oracle["overall"]["ctr"] > 0.3  # ranking by the truth beats (nearly) random ranking by far
    for d in range(world.num_domains):
        assert oracle[f"domain {d}"]["ctr"] > 0.1
    analysis = stats.analyze(result.cells(), abtest.policy_canary_shares(policy, world.num_domains))
    ctr = analysis["overall"].metrics["ctr"]
    assert ctr.p_value < 0.01 and ctr.rel_lift > 0
    assert abs(ctr.rel_lift - oracle["overall"]["ctr"]) < 3 * (ctr.rel_ci[1] - ctr.rel_ci[0]) / 3.92


def test_offline_aa_has_zero_oracle_lift_and_no_significant_difference(setup):
    # Even shares: every domain well inside the normal approximation (see stats.MIN_USERS_PER_ARM).
    world, policy = setup["world"], CanaryPolicy("aa", "salt", 0.5)
    scorer = ab_scorers.OfflineScorer(world, policy, setup["random"], setup["random"])
    result = abtest.simulate(world, scorer, 6000, seed=12, progress=False)
    oracle = abtest.oracle_lifts(result)
    assert oracle["overall"]["ctr"] == 0.0 and oracle["overall"]["gmv_per_user"] == 0.0
    analysis = stats.analyze(result.cells(), abtest.policy_canary_shares(policy, world.num_domains))
    assert analysis["overall"].metrics["ctr"].p_value > 0.05
    assert all(d.metrics["ctr"].p_holm > 0.05 for d in analysis["domains"] if d.metrics)
    assert not analysis["overall"].srm_alarm


def test_offline_arms_follow_the_policy_per_domain(setup):
    world, policy = setup["world"], setup["policy"]
    scorer = ab_scorers.OfflineScorer(world, policy, setup["random"], setup["oracle"])
    result = abtest.simulate(world, scorer, 4000, seed=13, progress=False)
    user_ids = world.user_features(result.user)["user_id"]
    expected = np.array([policy.arm_for(d, u) == "canary" for d, u in zip(result.domain.tolist(), user_ids.tolist())])
    np.testing.assert_array_equal(result.canary, expected)
    cells = result.cells()
    for d, share in SHARES.items():
        in_domain = cells.domain == d
        observed = cells.canary[in_domain].mean()
        if share in (0.0, 1.0):
            assert observed == share
        else:
            assert stats.srm_pvalue(cells.canary[in_domain].sum(), (~cells.canary[in_domain]).sum(), share) > 0.001


def test_offline_cli_writes_the_report(setup, tmp_path):
    root = setup["root"]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("experiment: cli\nsalt: s\ndefault_canary_share: 0.5\n")
    parser = argparse.ArgumentParser()
    abtest_cli.register(parser.add_subparsers())
    args = parser.parse_args(["abtest", "offline", "--stable", str(root / "models" / "crocodile" / "1"),
                              "--canary", str(root / "models"), "--policy", str(policy_file),
                              "--world", str(root / "data"), "--impressions", "20000", "--report",
                              str(tmp_path / "report"), "--cuped-impressions", "20000", "--quiet"])
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["meta"]["canary"].endswith("models")  # base path: newest version (2, the oracle) is used
    assert report["oracle_overall_ctr_lift"] > 0.3
    assert report["cuped"] and report["meta"]["cuped_pre_period_impressions"] == 20000
    assert report["overall"]["metrics"]["gmv_per_user"]["cuped"]
    for name in ("report.md", "lift_by_domain.png", "cumulative_lift.png"):
        assert os.path.getsize(tmp_path / "report" / name) > 0
    args = parser.parse_args(["abtest", "offline", "--stable", str(root / "models"), "--policy", str(policy_file),
                              "--world", str(root / "data"), "--impressions", "0", "--report", str(tmp_path / "x")])
    with pytest.raises(abtest_cli.UserError, match="--impressions"):
        args.handler(args)
