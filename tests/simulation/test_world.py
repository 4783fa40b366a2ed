"""The world's statistics against its configuration, within sampling error, and its API."""
import math

import numpy as np
import pytest

from crocodile.errors import UserError
from crocodile.model import metrics
from crocodile.simulation import logs, sampling
from crocodile.simulation.world import CALIBRATION_REQUESTS_PER_DOMAIN, World, WorldConfig, domain_signs

CONFIG = WorldConfig(seed=3, num_users=3000, num_items=800)
IMPRESSIONS = 300_000


@pytest.fixture(scope="module")
def world():
    return World.create(CONFIG)


@pytest.fixture(scope="module")
def sample(world):
    chunks = list(logs.iterate_chunks(world, IMPRESSIONS, seed=11))
    merged = {}
    for log, truth in chunks:
        for key, values in {**log, **truth}.items():
            merged.setdefault(key, []).append(values)
    return {k: np.concatenate(v) for k, v in merged.items()}


def test_exact_row_count_and_bounded_chunks(world):
    chunks = list(logs.iterate_chunks(world, 45_007, seed=1, chunk_requests=1000))
    sizes = [len(log["click"]) for log, _ in chunks]
    assert sum(sizes) == 45_007 and max(sizes) == 1000 * CONFIG.slate_size  # streaming: one chunk in memory


def test_domain_shares_match_config(sample):
    slate = CONFIG.slate_size
    requests = len(sample["click"]) // slate
    domain_of_request = sample["domain_id"][::slate]
    for d, share in enumerate(CONFIG.domain_shares):
        observed = np.mean(domain_of_request == d)
        assert abs(observed - share) < 4 * math.sqrt(share * (1 - share) / requests), (d, observed, share)


def user_clustered_se(values, users):
    """Standard error of a mean over impressions that are correlated within users."""
    mean = values.mean()
    _, codes = np.unique(users, return_inverse=True)
    residual = np.bincount(codes, weights=values - mean)
    return math.sqrt(np.sum(residual ** 2)) / len(values)


def test_ctr_per_domain_matches_truth_and_config(sample):
    slate = CONFIG.slate_size
    for d, target in enumerate(CONFIG.domain_ctr):
        m = sample["domain_id"] == d
        p = sample["p_click"][m].astype(np.float64)
        clicks = sample["click"][m]
        # Clicks are Bernoulli(p_click): the observed CTR sits within binomial error of mean p.
        assert abs(clicks.mean() - p.mean()) < 4 * math.sqrt(np.sum(p * (1 - p))) / m.sum(), d
        # alpha_d was calibrated on an independent sample of CALIBRATION_REQUESTS_PER_DOMAIN
        # requests, so mean p_click differs from the target by both samples' errors.
        se = user_clustered_se(p, sample["user_id"][m])
        se_calibration = se * math.sqrt(m.sum() / (CALIBRATION_REQUESTS_PER_DOMAIN * slate))
        assert abs(p.mean() - target) < 4 * math.hypot(se, se_calibration), (d, p.mean(), target)
    assert 0.03 <= min(CONFIG.domain_ctr) and max(CONFIG.domain_ctr) <= 0.08


def test_price_is_lognormal_with_configured_parameters(world):
    log_price = np.log(world.item_features(np.arange(world.num_items))["price"])
    n = len(log_price)
    assert abs(log_price.mean() - CONFIG.price_log_mean) < 4 * CONFIG.price_log_sigma / math.sqrt(n)
    assert abs(log_price.std() - CONFIG.price_log_sigma) < 4 * CONFIG.price_log_sigma / math.sqrt(2 * n)


def test_random_exposure_slice(world, sample):
    flag = sample["is_random_exposure"].astype(bool)
    share = CONFIG.random_exposure_share
    assert abs(flag.mean() - share) < 4 * math.sqrt(share * (1 - share) / len(flag))
    # Random slots are uniform over the pool; the policy's slots favour popular items.
    popularity = world.item_popularity
    item_index = np.char.lstrip(sample["item_id"].astype(str), "i").astype(int)
    in_domain0 = sample["domain_id"] == 0
    top_decile = popularity >= np.quantile(popularity[world.domain_candidates(0)], 0.9)
    random_share_top = top_decile[item_index[flag & in_domain0]].mean()
    policy_share_top = top_decile[item_index[~flag & in_domain0]].mean()
    n_random = int((flag & in_domain0).sum())
    assert abs(random_share_top - 0.1) < 4 * math.sqrt(0.09 / n_random) + 0.005
    assert policy_share_top > 0.4


def test_oracle_beats_popularity_and_position_lowers_ctr(world, sample):
    item_index = np.char.lstrip(sample["item_id"].astype(str), "i").astype(int)
    oracle = metrics.auc(sample["click"], sample["p_click"])
    popularity_only = metrics.auc(sample["click"], world.item_popularity[item_index])
    assert oracle > popularity_only + 0.05 and oracle > 0.7
    ctr_by_position = [sample["click"][sample["position"] == k].mean() for k in (0, 4, 9)]
    assert ctr_by_position[0] > ctr_by_position[1] > ctr_by_position[2]


def test_purchase_rate_and_price_sensitivity(world, sample):
    clicked = sample["click"] == 1
    q = sample["p_purchase_given_click"][clicked].astype(np.float64)
    observed = sample["purchase"][clicked].mean()
    assert abs(observed - q.mean()) < 4 * math.sqrt(np.sum(q * (1 - q))) / clicked.sum()
    assert not np.any(sample["purchase"][~clicked])
    by_price = np.argsort(world.item_features(np.arange(world.num_items))["price"])
    cheap, dear = by_price[:200], by_price[-200:]
    assert world.purchase_probability(0, cheap, 0).mean() > 2 * world.purchase_probability(0, dear, 0).mean()


def test_user_activity_is_long_tailed(sample):
    _, counts = np.unique(sample["user_id"], return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[: len(top) // 10].sum() > 0.3 * top.sum()  # top 10 % users: > 30 % of impressions


def test_profile_fields_carry_preference_signal(world):
    latent, segment = world._user_latent, world._user_segment
    within = np.mean([latent[segment == s].var(axis=0).mean() for s in np.unique(segment)])
    assert within < 0.8 * latent.var(axis=0).mean()


def test_domain_conflict_signs_and_shift():
    signs = domain_signs(5, 8, 3)
    assert signs[0].tolist() == [1] * 8
    assert signs[1, :3].tolist() == [-1, 1, 1] and signs[3, :3].tolist() == [-1, -1, 1]
    assert signs[4, :3].tolist() == [1, 1, -1] and np.all(signs[:, 3:] == 1)


def test_conflict_changes_rankings_between_domains(world):
    items = world.domain_candidates(0)
    users = np.arange(200)[:, None]
    rel0 = world.click_logit(users, items[None, :], 0)
    rel3 = world.click_logit(users, items[None, :], 3)
    corr = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(rel0, rel3)])
    assert corr < 0.7  # the same user ranks the same items differently in a conflicting domain


def test_probability_api_broadcasts_and_includes_examination(world):
    users = np.array([[0], [5], [9]])
    items = np.array([[1, 2, 3, 4]] * 3)
    relevance = world.relevance_probability(users, items, 2)
    assert relevance.shape == (3, 4) and np.all((relevance > 0) & (relevance < 1))
    positions = np.arange(4)[None, :]
    clicks = world.click_probability(users, items, np.array([[2]] * 3), positions)
    np.testing.assert_allclose(clicks, relevance * (positions + 1.0) ** -CONFIG.examination_eta, rtol=1e-6)
    np.testing.assert_allclose(world.click_probability(users, items, 2, 0), relevance, rtol=1e-6)
    assert world.purchase_probability(users, items, 2).shape == (3, 4)


def test_sampling_api(world):
    rng = np.random.default_rng(0)
    users, domains = world.sample_requests(rng, 1000)
    assert users.shape == domains.shape == (1000,)
    assert users.min() >= 0 and users.max() < world.num_users and set(domains) <= set(range(5))
    for d in range(world.num_domains):
        candidates = world.sample_candidates(rng, d, 50, 30)
        assert candidates.shape == (50, 30)
        assert all(len(set(row)) == 30 for row in candidates.tolist())
        assert np.isin(candidates, world.domain_candidates(d)).all()
    features = world.user_features(np.array([0, 42]))
    assert features["user_id"].tolist() == ["u000000", "u000042"]
    assert set(world.item_features(np.array([3])).keys()) == {"item_id", "item_category", "price"}


def _candidates_row_by_row(world, rng, domain, n, k):
    """sample_candidates' definition computed one request at a time: popularity-weighted draws
    by binary search of the pool's CDF, the first k distinct in draw order, short rows topped up."""
    pool = world.domain_candidates(domain)
    popularity = world.item_popularity[pool]
    cdf = np.cumsum(popularity) / popularity.sum()
    draws = np.minimum(np.searchsorted(cdf, rng.random((n, 3 * k)), side="right"), len(pool) - 1)
    out = []
    for row in draws.tolist():
        distinct = list(dict.fromkeys(row))[:k]
        if len(distinct) < k:
            rest = rng.permutation(np.setdiff1d(np.arange(len(pool)), distinct))[: k - len(distinct)]
            distinct += rest.tolist()
        out.append(pool[distinct])
    return np.array(out)


def test_candidate_sampling_matches_its_row_by_row_definition(world):
    """The vectorised sampler (bucket-table inverse CDF, first-draw table) gives the same items
    from the same random numbers, including the top-up of rows with too few distinct draws."""
    for d in range(world.num_domains):
        fast = world.sample_candidates(np.random.default_rng(d), d, 700, 30)
        np.testing.assert_array_equal(fast, _candidates_row_by_row(world, np.random.default_rng(d), d, 700, 30))
    tiny = World.create(WorldConfig(seed=1, num_users=50, num_items=40,
                                    domain_pool_fraction=(1.0, 0.9, 0.8, 0.8, 0.76)))
    fast = tiny.sample_candidates(np.random.default_rng(5), 4, 300, 30)
    np.testing.assert_array_equal(fast, _candidates_row_by_row(tiny, np.random.default_rng(5), 4, 300, 30))
    assert all(len(set(row)) == 30 for row in fast.tolist())


def test_inverse_cdf_equals_binary_search_at_bucket_edges_and_crowded_buckets():
    rng = np.random.default_rng(0)
    weights = np.concatenate([rng.random(50), np.full(200, 1e-9), rng.random(50)])  # 200 points in one bucket
    cdf = np.cumsum(weights) / weights.sum()
    inverse = sampling.InverseCdf(cdf, buckets=64)
    u = np.concatenate([rng.random(20_000), cdf[:-1], np.arange(64) / 64, np.nextafter(cdf[:-1], 0)])
    u = u[(u >= 0) & (u < 1)]
    np.testing.assert_array_equal(inverse(u), np.searchsorted(cdf, u, side="right"))


def test_determinism_and_save_load(world, tmp_path):
    again = World.create(CONFIG)
    for key, values in world.arrays.items():
        np.testing.assert_array_equal(values, again.arrays[key], err_msg=key)
    other = World.create(WorldConfig(seed=4, num_users=3000, num_items=800))
    assert not np.allclose(world._user_latent, other._user_latent)
    first = next(logs.iterate_chunks(world, 5000, seed=2))
    second = next(logs.iterate_chunks(again, 5000, seed=2))
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], second[0][key])
    world.save(str(tmp_path / "w"))
    loaded = World.load(str(tmp_path / "w"))
    assert loaded.config == world.config
    u, i = np.arange(50), np.arange(50)
    np.testing.assert_array_equal(loaded.click_probability(u, i, 1, 3), world.click_probability(u, i, 1, 3))


def test_config_round_trip_and_validation():
    assert WorldConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(UserError, match="domain_shares"):
        WorldConfig(domain_shares=(0.5, 0.5))
    with pytest.raises(UserError, match="unknown keys"):
        WorldConfig.from_dict({"seed": 1, "colour": "green"})
    with pytest.raises(UserError, match="world directory"):
        World.load("/nonexistent/world")
