"""World presets: the structure each one promises, checked on the world it builds."""
import numpy as np
import pytest

from crocodile.errors import UserError
from crocodile.simulation import logs, presets
from crocodile.simulation.world import World, WorldConfig, domain_signs, sigmoid


def _world(name, **extra):
    return World.create(WorldConfig(seed=0, **{**presets.world_fields(name), **extra}))


def test_conflict_codes_place_flips_in_any_domain():
    signs = domain_signs(5, 8, 3, conflict_codes=(1, 0, 2, 4, 3))
    assert signs[0, :3].tolist() == [-1, 1, 1]          # the largest domain has a conflict
    assert signs[1].tolist() == [1] * 8                   # the second largest is the unflipped one
    assert signs[3, :3].tolist() == [1, 1, -1] and signs[4, :3].tolist() == [-1, -1, 1]
    with pytest.raises(UserError, match="conflict_codes"):
        WorldConfig(conflict_codes=(8, 0, 0, 0, 0))
    with pytest.raises(UserError, match="conflict_codes has 2 values"):
        WorldConfig(conflict_codes=(1, 0))
    with pytest.raises(UserError, match="reference_domain"):
        WorldConfig(reference_domain=5)


def test_null_world_has_no_domain_specific_preference():
    world = _world("null", num_users=500, num_items=300)
    users, items = np.arange(500)[:, None], np.arange(300)[None, :]
    alpha = world.domain_alpha
    base = world.click_logit(users, items, 0) - alpha[0]
    for d in range(1, world.num_domains):
        np.testing.assert_allclose(world.click_logit(users, items, d) - alpha[d], base, atol=1e-5)
        np.testing.assert_allclose(world.purchase_probability(users, items, d),
                                   world.purchase_probability(users, items, 0))


def test_benchmark_world_shifts_every_domain_and_flips_the_largest():
    world = _world("benchmark", num_users=500, num_items=300)
    assert np.all(np.abs(world._domain_shift).sum(axis=1) > 0)   # reference_domain = -1: no neutral domain
    users, items = np.arange(500)[:, None], np.arange(300)[None, :]
    # Domain 0 and domain 1 rank the same user's items differently.
    corr = np.corrcoef((world.click_logit(users, items, 0) - world.click_logit(users, 0, 0)).ravel(),
                       (world.click_logit(users, items, 1) - world.click_logit(users, 0, 1)).ravel())[0, 1]
    assert corr < 0.9


def test_purchase_depends_on_user_item_affinity_and_domain_by_hand():
    world = _world("demo", num_users=50, num_items=100)
    c, u, i, d = world.config, 7, 13, 2
    affinity = float(world._user_purchase_taste[u] @ world._item_latent[i]) / np.sqrt(c.latent_dim)
    logit = (c.purchase_logit + world._user_purchase_bias[u] + 0.3 * world._item_bias[i]
             - c.price_sensitivity * (np.log(world._item_price[i]) - c.price_log_mean)
             + c.purchase_affinity_scale * affinity + world._purchase_domain_bias[d])
    assert world.purchase_probability(u, i, d) == pytest.approx(sigmoid(logit), rel=1e-5)
    assert len(set(np.round(world._purchase_domain_bias, 6))) == world.num_domains
    # Legacy worlds (no preset): the purchase model has neither term.
    legacy = World.create(WorldConfig(seed=0, num_users=50, num_items=100))
    assert legacy.purchase_probability(u, i, 0) == pytest.approx(legacy.purchase_probability(u, i, 4))


def test_demo_preset_users_have_histories_and_return_in_the_ab_traffic():
    preset = presets.get("demo")
    world = World.create(WorldConfig(seed=0, **presets.world_fields("demo")))
    users = np.concatenate([log["user_id"] for log, _ in logs.iterate_chunks(world, preset.impressions, seed=0)])
    _, per_user = np.unique(users, return_counts=True)
    assert 0.8 * np.median(per_user) >= 30            # median active user: >= 30 training impressions
    ab_users, _ = world.sample_requests(np.random.default_rng(1), 20_000)
    seen = np.isin(world.user_features(ab_users)["user_id"], users)
    assert seen.mean() > 0.9                          # A/B traffic comes from users seen in training


def test_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(UserError, match="demo, benchmark, null"):
        presets.get("bench")
