"""Tiny synthetic multi-domain data with a planted signal, for the model tests."""
import numpy as np
import pytest

from crocodile.model.features import WORLD_FEATURES, transformed_name

VOCAB = 40
TINY_HPARAMS = {"embedding_dim": 4, "prior_embedding_dim": 4, "expert_units": (16, 8), "tower_units": (8,),
                "num_experts": 3, "num_embedding_sets": 3, "learning_rate": 0.02, "star_aux_units": (4,),
                "pepnet_gate_units": 8, "lora_rank": 2, "embedding_init_stddev": 0.05}


def make_toy_arrays(n: int, seed: int = 0):
    """Clicks depend on a user score and an item score whose sign flips in odd domains
    (a preference conflict), so a model that uses ids and the domain can learn it."""
    rng = np.random.default_rng(seed)
    config = WORLD_FEATURES
    features = {transformed_name(k): rng.integers(0, VOCAB, n).astype(np.int64) for k in config.categorical}
    features[transformed_name("price")] = rng.normal(size=n).astype(np.float32)
    domain = rng.choice(config.num_domains, size=n, p=[0.4, 0.25, 0.15, 0.12, 0.08]).astype(np.int64)
    features[transformed_name("domain_id")] = domain
    planted = np.random.default_rng(1234)
    user_score, item_score = planted.normal(size=VOCAB), planted.normal(size=VOCAB)
    sign = np.where(domain % 2 == 0, 1.0, -1.0)
    logit = 2.0 * (user_score[features["user_id_xf"]] + sign * item_score[features["item_id_xf"]])
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return features, labels


@pytest.fixture(scope="session")
def toy_data():
    return make_toy_arrays(2048)


@pytest.fixture(scope="session")
def vocab_sizes():
    return {k: VOCAB for k in WORLD_FEATURES.categorical}


@pytest.fixture(scope="session")
def tiny_hparams():
    return dict(TINY_HPARAMS)
