"""The A/B simulator with tiny real SavedModels: oracle lift, A/A, assignment, and the offline CLI."""
import argparse
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from crocodile.serving.examples import make_example
from crocodile.serving.policy import CanaryPolicy
from crocodile.simulation import ab_calibration, ab_scorers, abtest, abtest_cli, stats
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


def test_pair_encoding_builds_the_examples_of_the_request_encoding(setup):
    world = setup["world"]
    encoder = ab_scorers.ExampleEncoder(world)
    rng = np.random.default_rng(1)
    user, domain, item = (rng.integers(0, n, 500) for n in (world.num_users, world.num_domains, world.num_items))
    pair = np.sort(user * world.num_domains + domain)  # runs of equal pairs, as the cache's sorted keys give
    pair[100:200] = pair[100]
    for pairs in (pair, rng.permutation(pair)):
        np.testing.assert_array_equal(encoder.encode_pairs(pairs, item),
                                      encoder.encode(pairs // world.num_domains, pairs % world.num_domains,
                                                     item[:, None]))
    assert encoder.encode_pairs(pair[:0], item[:0]).shape == (0,)


@pytest.mark.parametrize("dense", [True, False])
def test_score_cache_returns_what_was_added_in_both_layouts(dense):
    key_space = 50_000
    cache = ab_scorers.ScoreCache(key_space, max_entries=key_space if dense else 30_000)
    assert cache.dense == dense
    rng = np.random.default_rng(2)
    reference = {}
    for _ in range(6):
        keys = rng.integers(0, key_space, 4000)
        scores, found = cache.lookup(keys)
        np.testing.assert_array_equal(found, [k in reference for k in keys.tolist()])
        np.testing.assert_array_equal(scores[found], [reference[k] for k in keys[found].tolist()])
        assert np.isnan(scores[~found]).all()
        new = np.unique(keys[~found])
        values = rng.random(new.size).astype(np.float32)
        values[:3] = 0.0, 1.0, -2.5  # any float round-trips, zero included
        cache.add(new, values)
        reference.update(zip(new.tolist(), values.tolist()))
    assert len(cache) == len(reference)
    if not dense:  # past max_entries nothing new is kept
        cache.add(np.arange(key_space, key_space + 12_000), np.zeros(12_000, np.float32))
        assert len(cache) == len(reference)


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
                              str(tmp_path / "report"), "--cuped-impressions", "20000", "--quiet",
                              "--candidate-status", "not blessed by the pipeline", "--oracle-requests", "500"])
    assert args.handler(args) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    # Truth far above zero and a clear estimate: the verdict is to ship, next to the pipeline's refusal.
    assert report["verdict"] == "ship" and report["candidate_status"] == "not blessed by the pipeline"
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Candidate: not blessed by the pipeline. Simulated truth" in markdown.split("## Run")[0]
    assert report["oracle_overall_ctr_lift_se"] > 0 and report["meta"]["oracle_requests_per_domain"] == 500
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
    args = parser.parse_args(["abtest", "offline", "--stable", str(root / "models"), "--policy", str(policy_file),
                              "--world", str(root / "data"), "--impressions", "10", "--aa", "--report",
                              str(tmp_path / "y"), "--oracle-requests", "some"])
    with pytest.raises(abtest_cli.UserError, match="--oracle-requests must be a positive integer or 'all'"):
        args.handler(args)
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("score_table", [True, False])
def test_fast_offline_path_matches_the_exhaustive_one(setup, score_table, monkeypatch):
    """Score reuse and the sampled oracle change the cost, not the results: on one seed the
    estimates are identical and the sampled oracle lift is within its sampling error of the exact one.
    Both cache layouts: the key-indexed table and (a world too large for it) the sorted keys."""
    world, policy = setup["world"], setup["policy"]
    if not score_table:
        monkeypatch.setattr(ab_scorers, "MAX_CACHED_SCORES", world.num_users * world.num_domains * world.num_items - 1)
    runs = {}
    for name, exhaustive, oracle_requests in (("old", True, None), ("new", False, 150)):
        scorer = ab_scorers.OfflineScorer(world, policy, setup["random"], setup["oracle"], exhaustive=exhaustive)
        pre = abtest.simulate(world, scorer.pre_period(), 1500, seed=20 + abtest.PRE_PERIOD_SEED_OFFSET,
                              progress=False)
        result = abtest.simulate(world, scorer, 3000, seed=20, progress=False, oracle_requests=oracle_requests)
        runs[name] = (pre, result, scorer.examples_scored)
        if not exhaustive:
            assert scorer._models.canary._cache.dense == score_table
    (old_pre, old, old_cost), (new_pre, new, new_cost) = runs["old"], runs["new"]
    for field in ("user", "domain", "canary", "clicks", "purchases", "gmv"):
        np.testing.assert_array_equal(getattr(new, field), getattr(old, field))
        np.testing.assert_array_equal(getattr(new_pre, field), getattr(old_pre, field))
    shares = abtest.policy_canary_shares(policy, world.num_domains)
    cells_old = old.cells().with_pre_period(old_pre.cells())
    cells_new = new.cells().with_pre_period(new_pre.cells())
    a, b = (stats.analyze(c, shares, use_cuped=True)["overall"].metrics["ctr"] for c in (cells_old, cells_new))
    assert (a.rel_lift, a.rel_ci, a.p_value) == (b.rel_lift, b.rel_ci, b.p_value)
    # The exhaustive oracle is exact; the new one scored ~150 requests per domain with both models
    # (all of domains 3 and 4, which have fewer).
    assert np.all(old.oracle_variance_terms == 0)
    assert np.all(new.oracle_sampled_requests[:3] < old.oracle_requests[:3])
    np.testing.assert_array_equal(new.oracle_sampled_requests[3:], old.oracle_requests[3:])
    exact, sampled = abtest.oracle_lifts(old, [0, 1, 2]), abtest.oracle_lifts(new, [0, 1, 2])
    for scope in ("overall", "domain 0", "domain 1", "domain 2"):
        for metric in ("ctr", "gmv_per_user"):
            se = sampled[scope][metric + "_se"]
            assert 0 < se < 0.25 * abs(exact[scope][metric])
            assert abs(sampled[scope][metric] - exact[scope][metric]) < 4 * se, (scope, metric)
    # Each distinct (user, domain, item) once per model, the other arm's model on the sample only.
    assert new_cost < 0.5 * old_cost


def test_logging_policy_pre_period_reproduces_the_logged_ctr_without_models(setup):
    """The world calibrates alpha_d so that its logging policy's traffic has the configured CTR per
    domain; a pre-period ranked by LoggingPolicyScorer must show those CTRs (a little above: its
    5% random-exposure slots are left out), below what ranking by the true relevance gives."""
    world = setup["world"]
    pre = abtest.simulate(world, ab_scorers.LoggingPolicyScorer(world, seed=1), 20000, seed=3, progress=False)
    best = abtest.simulate(world, ab_calibration.RelevanceScorer(world),
                           20000, seed=3, progress=False)
    for d, configured in enumerate(world.config.domain_ctr):
        rows = pre.domain == d
        ctr = pre.clicks[rows].sum() / pre.impressions[rows].sum()
        assert configured * 0.9 < ctr < configured * 1.2, (d, ctr, configured)
        rows = best.domain == d
        assert best.clicks[rows].sum() / best.impressions[rows].sum() > 1.05 * ctr
    assert not pre.canary.any() and pre.oracle_clicks is None


def test_expected_outcomes_of_ranking_sum_the_true_probabilities_of_the_top_of_the_list(setup):
    world = setup["world"]
    user, domain = np.array([3, 11]), np.array([1, 4])
    candidates = np.array([[10, 20, 30, 40], [5, 6, 7, 8]])
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.4, 0.2, 0.8]])  # row 2: a tie keeps candidate order
    clicks, gmv = abtest.expected_outcomes_of_ranking(world, user, domain, candidates, scores, slate_size=3)
    prices = world.item_features(np.arange(world.num_items))["price"]
    for r, shown in enumerate(([20, 40, 30], [8, 5, 6])):
        p_click = [float(world.click_probability(user[r], item, domain[r], position))
                   for position, item in enumerate(shown)]
        p_buy = [float(world.purchase_probability(user[r], item, domain[r])) for item in shown]
        assert clicks[r] == pytest.approx(sum(p_click), rel=1e-6)  # the world computes in float32
        assert gmv[r] == pytest.approx(sum(c * b * prices[i] for c, b, i in zip(p_click, p_buy, shown)), rel=1e-6)
