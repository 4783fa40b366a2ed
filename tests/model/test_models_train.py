"""Every registered model learns the planted signal: its loss falls after a few steps."""
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
    if model.training_data_columns:      # EDDA: alignment pairs from the training rows
        model.prepare_training_data({**features, "click": labels})
    compile_model(model, resolve(name, tiny_hparams))
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(256)
    before = _eval_bce(model, features, labels)
    history = model.fit(dataset, epochs=4, verbose=0)
    after = _eval_bce(model, features, labels)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before - 0.3, f"{name}: per-domain BCE {before:.3f} -> {after:.3f}"
    assert "auc" in history.history


@pytest.mark.parametrize("overrides", [
    {"embedding": "se"}, {"gate": "pg"}, {"gate": "eg"}, {"gate": "g"},
    {"disentangle_loss": "none"}, {"disentangle_loss": "ole"}, {"num_embedding_sets": 2}])
def test_crocodile_ablations_build_and_train(overrides, toy_data, vocab_sizes, tiny_hparams):
    features, labels = toy_data
    hparams = {**tiny_hparams, **overrides}
    model = build_model("crocodile", WORLD_FEATURES, vocab_sizes, hparams)
    compile_model(model, resolve("crocodile", hparams))
    small = ({k: v[:512] for k, v in features.items()}, labels[:512])
    history = model.fit(tf.data.Dataset.from_tensor_slices(small).batch(256), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    experts = model.network(small[0], training=False)["expert_outputs"].numpy()
    assert experts.shape == (512, hparams["num_embedding_sets"] if "num_embedding_sets" in overrides else 3, 8)
    assert (experts >= 0).all()     # experts end in ReLU


def test_covariance_loss_is_applied_in_training_only(toy_data, vocab_sizes, tiny_hparams):
    features, labels = toy_data
    hparams = {**tiny_hparams, "embedding_l2": 0.0, "disentangle_weight": 10.0}
    model = build_model("crocodile", WORLD_FEATURES, vocab_sizes, hparams)
    batch = ({k: v[:64] for k, v in features.items()}, labels[:64])
    eval_loss = float(model.compute_loss(batch, training=False))
    assert eval_loss == pytest.approx(_eval_bce(model, *batch), rel=1e-5)
    tf.random.set_seed(1)
    train_loss = float(model.compute_loss(batch, training=True))
    assert train_loss > eval_loss      # + lambda * CovLoss on 32 sampled rows


def test_unknown_model_and_hparam_are_rejected(vocab_sizes):
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", WORLD_FEATURES, vocab_sizes)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        build_model("mmoe", WORLD_FEATURES, vocab_sizes, {"bogus": 1})
