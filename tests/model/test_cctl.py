"""CCTL: source-sample weights, the companion network's parameter sync, the first-order
information gain, the contrastive task, the ablation switches and the loss-free export."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.cctl import (DOMAIN_LOGITS, TOWER_HIDDEN, domain_contrastive_loss, first_order_gain,
                                  source_weighted_bce)
from crocodile.model.features import WORLD_FEATURES
from crocodile.model.registry import build_model
from crocodile.model.training import compile_model, resolve


def _bce(y, z):
    return math.log1p(math.exp(-z)) if y else math.log1p(math.exp(z))


def test_source_weights_scale_each_source_sample_loss_exactly():
    labels = tf.constant([1.0, 0.0, 1.0])
    domain = tf.constant([0, 0, 1])
    logits = tf.Variable([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5]])
    weights = tf.constant([[9.0, 0.25], [9.0, 0.5], [2.0, 9.0]])     # own-domain entries are ignored
    with tf.GradientTape() as tape:
        loss = source_weighted_bce(labels, logits, domain, weights, 2)
    # Target 0: source row 2 only (n_source = 1); target 1: source rows 0 and 1 (n_source = 2).
    expected = 2.0 * _bce(1, -0.7) + (0.25 * _bce(1, -1.0) + 0.5 * _bce(0, 0.3)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    grad = tape.gradient(loss, logits).numpy()
    sig = lambda z: 1 / (1 + math.exp(-z))
    np.testing.assert_allclose(grad, [[0, 0.25 * (sig(-1.0) - 1) / 2], [0, 0.5 * sig(0.3) / 2],
                                      [2.0 * (sig(-0.7) - 1), 0]], rtol=1e-5, atol=1e-7)
    # Doubling one sample's weight doubles exactly its own term.
    doubled = source_weighted_bce(labels, logits, domain, tf.tensor_scatter_nd_update(weights, [[1, 1]], [1.0]), 2)
    assert float(doubled) - float(loss) == pytest.approx(0.5 * _bce(0, 0.3) / 2, rel=1e-5)


def test_first_order_gain_equals_the_autodiff_inner_product():
    """r_it = <d mean_{j in t} BCE(pure) / d last layer_t, d BCE_it(mixed) / d last layer_t>."""
    rng = np.random.default_rng(0)
    n, s, d = 7, 3, 4
    domain = np.array([0, 1, 2, 0, 1, 1, 2])
    labels = rng.integers(0, 2, n).astype(np.float32)
    kernel_m, bias_m = rng.normal(size=(s, d)), rng.normal(size=s)
    kernel_p, bias_p = rng.normal(size=(s, d)), rng.normal(size=s)
    hidden_m, hidden_p = rng.random((n, s, d)), rng.random((n, s, d))
    logits_m = np.einsum("nsd,sd->ns", hidden_m, kernel_m) + bias_m
    logits_p = np.einsum("nsd,sd->ns", hidden_p, kernel_p) + bias_p
    mixed = {DOMAIN_LOGITS: tf.constant(logits_m, tf.float32), TOWER_HIDDEN: tf.constant(hidden_m, tf.float32)}
    pure = {DOMAIN_LOGITS: tf.constant(logits_p, tf.float32), TOWER_HIDDEN: tf.constant(hidden_p, tf.float32)}
    got = first_order_gain(tf.constant(labels), mixed, pure, tf.constant(domain), s).numpy()

    def last_layer_grad(hidden, kernel, bias, rows, t):
        w = tf.Variable(np.concatenate([kernel[t], [bias[t]]]))
        with tf.GradientTape() as tape:
            z = tf.linalg.matvec(tf.constant(hidden[rows, t]), w[:-1]) + w[-1]
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.constant(labels[rows], tf.float64), logits=z))
        return tape.gradient(loss, w).numpy()

    for t in range(s):
        target = last_layer_grad(hidden_p, kernel_p, bias_p, np.flatnonzero(domain == t), t)
        for i in range(n):
            source = last_layer_grad(hidden_m, kernel_m, bias_m, np.array([i]), t)
            assert got[i, t] == pytest.approx(float(target @ source), rel=1e-4, abs=1e-6)


def test_domain_contrastive_loss_on_hand_values():
    # Rows 0 and 1 share domain 0 with cos = 1; row 2 (domain 1) is orthogonal: for rows 0 and
    # 1 the positive has logit 1/T and the other row 0; row 2 has no positive and is skipped.
    z = tf.constant([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    temperature = 0.5
    loss = domain_contrastive_loss(z, tf.constant([0, 0, 1]), temperature)
    expected = -(2.0 - math.log(math.exp(2.0) + 1.0))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def _model(vocab_sizes, tiny_hparams, **overrides):
    hparams = {**tiny_hparams, "embedding_l2": 0.0, **overrides}
    model = build_model("cctl", WORLD_FEATURES, vocab_sizes, hparams)
    compile_model(model, resolve("cctl", hparams))
    return model


def _same(a, b):
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.variables, b.variables))


def test_pure_network_is_synchronised_every_k_steps(toy_data, vocab_sizes, tiny_hparams, tmp_path):
    features, labels = toy_data
    model = _model(vocab_sizes, tiny_hparams, cctl_sync_every=3)
    assert _same(model.pure, model.network)                   # starts as a copy
    for step in range(7):
        model.pure.variables[0].assign_add(tf.ones_like(model.pure.variables[0]))   # the pure net moves on
        model.synchronise_if_due()
        assert _same(model.pure, model.network) == (step % 3 == 0), step
    assert int(model.syncs_done) == 3                         # steps 0, 3, 6
    # In training: 8 steps of fit -> syncs at steps 0, 3, 6.
    model = _model(vocab_sizes, tiny_hparams, cctl_sync_every=3)
    data = tf.data.Dataset.from_tensor_slices(({k: v[:1024] for k, v in features.items()}, labels[:1024])).batch(128)
    history = model.fit(data, epochs=1, verbose=0)
    assert 0.0 < history.history["source_weight"][0] < 1.0 and np.isfinite(history.history["information_gain"][0])
    assert int(model.sync_step) == 8 and int(model.syncs_done) == 3
    assert not _same(model.pure, model.network)               # both trained since the last sync, differently

    # Training-only state by object identity (Keras gives eagerly built Sequentials short names,
    # so names can repeat): the pure copy, the IFN and the projection head all exist and are
    # trained, and the SavedModel of `model.network` holds exactly the network's variables.
    # (tests/model/test_serving_path.py and test_models_train.py also cover cctl.)
    network_ids = {id(v) for v in model.network.variables}
    training_only = [v for v in model.trainable_variables if id(v) not in network_ids]
    parts = (model.pure.variables, model.information_flow.variables, model.projection.variables)
    assert {id(v) for v in training_only} == {id(v) for part in parts for v in part} and all(parts)
    tf.saved_model.save(model.network, str(tmp_path))
    saved = [key for key, _ in tf.train.list_variables(os.path.join(str(tmp_path), "variables", "variables"))
             if key.endswith("VARIABLE_VALUE")]
    assert len(saved) == len(model.network.variables)


def test_each_ablation_switch_changes_the_training_loss(toy_data, vocab_sizes, tiny_hparams):
    features, labels = toy_data
    batch = ({k: v[:128] for k, v in features.items()}, labels[:128])

    def training_loss(**overrides):
        tf.keras.utils.set_random_seed(5)
        model = _model(vocab_sizes, tiny_hparams, **overrides)
        tf.random.set_seed(7)
        return float(model.compute_loss(batch, training=True)), model

    full, model = training_loss()
    no_flow, _ = training_loss(cctl_information_flow=False)
    no_contrast, _ = training_loss(cctl_contrastive_weight=0.0)
    bare, bare_model = training_loss(cctl_information_flow=False, cctl_contrastive_weight=0.0)
    assert len({round(x, 6) for x in (full, no_flow, no_contrast, bare)}) == 4
    # Bare: target BCE + the source BCE with weights 1, computed by hand from the network.
    outputs = bare_model.network(batch[0], training=False)
    domain = tf.cast(batch[0]["domain_id_xf"], tf.int32)
    y = batch[1].astype(np.float32)
    per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.broadcast_to(y[:, None], [128, 5]),
                                                      logits=outputs[DOMAIN_LOGITS]).numpy()
    own = np.eye(5)[domain.numpy()] > 0
    expected = sum(per_row[own[:, t], t].mean() + per_row[~own[:, t], t].mean() for t in range(5))
    assert bare == pytest.approx(expected, rel=1e-5)
    assert float(bare_model.compute_loss(batch, training=False)) == pytest.approx(
        sum(per_row[own[:, t], t].mean() for t in range(5)), rel=1e-5)   # evaluation: plain per-domain BCE
    assert bare_model.pure is None and model.pure is not None
