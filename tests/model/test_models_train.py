"""Every registered model learns the planted signal: its loss falls after a few steps.
(Crocodile's switches and its training loss are checked against NumPy references in
test_crocodile_switches.py.)"""
import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.features import WORLD_FEATURES
from crocodile.model.hparams import LOGIT
from crocodile.model.inputs import domain_ids
from crocodile.model.losses import per_domain_bce
from crocodile.model.registry import MODEL_NAMES, build_model
from crocodile.model.training import compile_model, resolve


def _eval_bce(model, features, labels):
    logits = model.network(features, training=False)[LOGIT]
    return float(per_domain_bce(labels, logits, domain_ids(features), WORLD_FEATURES.num_domains))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_lowers_its_loss_on_a_learnable_toy_problem(name, toy_data, vocab_sizes, tiny_hparams):
    tf.keras.utils.set_random_seed(0)
    features, labels = toy_data
    model = build_model(name, WORLD_FEATURES, vocab_sizes, tiny_hparams)
    compile_model(model, resolve(name, tiny_hparams))
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(256)
    before = _eval_bce(model, features, labels)
    history = model.fit(dataset, epochs=4, verbose=0)
    after = _eval_bce(model, features, labels)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.3, f"{name}: per-domain BCE {before:.3f} -> {after:.3f}"
    assert "auc" in history.history


def test_unknown_model_and_hparam_are_rejected(vocab_sizes):
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", WORLD_FEATURES, vocab_sizes)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        build_model("mmoe", WORLD_FEATURES, vocab_sizes, {"bogus": 1})
