"""Tests that would notice a broken Crocodile switch or training term.

Each compares the model with an independent NumPy implementation or with a property the
paper states: the forward pass of every (embedding, gate) variant against a NumPy forward
from the network's own weights; the training loss against per-domain BCE + lambda * CovLoss
+ L2 computed in NumPy from the network's outputs; embedding set p feeds only expert p; the
PeG gate reads the prior tables and nothing else; STEM's stop-gradient; MLoRA's start.
"""
import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.features import WORLD_FEATURES, transformed_name
from crocodile.model.hparams import EXPERT_OUTPUTS, EXPERT_PRE_ACTIVATIONS, LOGIT
from crocodile.model.losses import stratified_row_indices
from crocodile.model.registry import build_model
from crocodile.model.training import compile_model

N = 96


def _relu(x):
    return np.maximum(x, 0.0)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _batch(toy_data, n=N):
    features, labels = toy_data
    return {k: v[:n] for k, v in features.items()}, labels[:n]


def _build(vocab_sizes, tiny_hparams, features, **overrides):
    tf.keras.utils.set_random_seed(7)
    model = build_model("crocodile", WORLD_FEATURES, vocab_sizes, {**tiny_hparams, **overrides})
    model.network(features, training=False)            # builds every variable
    return model


def _grouped_mlp(layers, x, final_relu):
    """NumPy GroupedMLP: x (N, G, in) or (N, in); ReLU between layers."""
    for i, layer in enumerate(layers):
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        x = (np.einsum("ni,gio->ngo", x, kernel) if x.ndim == 2 else np.einsum("ngi,gio->ngo", x, kernel)) + bias
        if i < len(layers) - 1 or final_relu:
            x = _relu(x)
    return x


def numpy_crocodile(network, features):
    """Crocodile's forward pass written from DESIGN 5.1-5.5 with the network's weights:
    returns (logit (N,), expert outputs (N, M, d))."""
    h, config = network.hparams, network.feature_config
    e, sets, m = h.embedding_dim, network.num_embedding_sets, network.num_experts
    tables = {k: v.numpy() for k, v in network.embedding_tables.items()}
    per_field = [tables[k][features[transformed_name(k)]].reshape(-1, sets, e) for k in config.categorical]
    embeddings = np.concatenate(per_field, axis=-1)                                  # (N, sets, F*e)
    dense = np.stack([features[transformed_name(k)].astype(np.float64) for k in config.numeric], axis=1)
    per_set = np.concatenate([embeddings, np.repeat(dense[:, None], sets, axis=1)], axis=-1)
    if sets == 1:
        per_set = np.repeat(per_set, m, axis=1)
    experts = _grouped_mlp(network.experts.layers_, per_set, final_relu=True)         # (N, M, d)
    domain = features[transformed_name("domain_id")]
    if h.gate in ("peg", "pg"):
        prior = network.prior
        parts = [prior.tables.table_for(k).numpy()[features[transformed_name(k)]] for k in prior.fields]
        parts.append(prior.domain_table.table.numpy()[domain])
        gate_in = np.concatenate(parts, axis=1)
    else:
        gate_in = np.concatenate([embeddings.mean(axis=1), dense], axis=1)
    logits = np.einsum("ni,gio->ngo", gate_in, network.gates.logits.kernel.numpy()) + network.gates.logits.bias.numpy()
    own = logits[np.arange(len(domain)), domain]
    if h.gate in ("peg", "eg"):
        weights = _softmax(own.reshape(-1, m, experts.shape[2]), axis=1)             # per dimension
        mixed = (weights * experts).sum(axis=1)
    else:
        weights = _softmax(own, axis=1)                                             # one weight per expert
        mixed = np.einsum("nm,nmd->nd", weights, experts)
    towers = _grouped_mlp(network.towers.towers.layers_, mixed, final_relu=False)[..., 0]   # (N, S)
    return towers[np.arange(len(domain)), domain], experts


@pytest.mark.parametrize("embedding,gate", [("me", "peg"), ("me", "pg"), ("se", "peg"), ("me", "eg"), ("me", "g")])
def test_forward_matches_an_independent_numpy_forward(embedding, gate, toy_data, vocab_sizes, tiny_hparams):
    features, _ = _batch(toy_data)
    model = _build(vocab_sizes, tiny_hparams, features, embedding=embedding, gate=gate)
    out = model.network(features, training=False)
    logit, experts = numpy_crocodile(model.network, features)
    np.testing.assert_allclose(out[EXPERT_OUTPUTS].numpy(), experts, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[LOGIT].numpy(), logit, rtol=1e-4, atol=1e-5)
    assert EXPERT_PRE_ACTIVATIONS not in out                                        # inference outputs only


def test_se_feeds_every_expert_the_same_embedding_and_me_does_not(toy_data, vocab_sizes, tiny_hparams):
    features, _ = _batch(toy_data)
    outputs = {}
    for embedding in ("se", "me"):
        network = _build(vocab_sizes, tiny_hparams, features, embedding=embedding).network
        for layer in network.experts.layers_:                 # identical experts: only the inputs differ
            layer.kernel.assign(tf.repeat(layer.kernel[:1], layer.kernel.shape[0], axis=0))
            layer.bias.assign(tf.repeat(layer.bias[:1], layer.bias.shape[0], axis=0))
        outputs[embedding] = network(features, training=False)[EXPERT_OUTPUTS].numpy()
    se, me = outputs["se"], outputs["me"]
    assert np.abs(se).max() > 0
    np.testing.assert_allclose(se, np.repeat(se[:, :1], se.shape[1], axis=1), rtol=1e-6)
    assert np.abs(me[:, 1:] - me[:, :1]).max() > 1e-3


def test_pg_mixes_whole_experts_and_peg_per_dimension(toy_data, vocab_sizes, tiny_hparams):
    features, _ = _batch(toy_data)
    for gate, per_dimension in (("pg", False), ("peg", True)):
        network = _build(vocab_sizes, tiny_hparams, features, gate=gate).network
        for var in (network.gates.logits.kernel, network.gates.logits.bias):   # make the gate non-trivial
            var.assign(tf.random.stateless_normal(var.shape, seed=[1, 2]))
        weights = network.mixing_weights(network.inputs_layer(features), features).numpy()
        if per_dimension:
            assert weights.shape == (N, 3, 8)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
            assert weights.std(axis=2).max() > 0.05                      # differs across dimensions
        else:
            assert weights.shape == (N, 3)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)


def test_perturbing_embedding_set_p_changes_only_expert_p(toy_data, vocab_sizes, tiny_hparams):
    features, _ = _batch(toy_data)
    network = _build(vocab_sizes, tiny_hparams, features).network
    e = tiny_hparams["embedding_dim"]
    before = network(features, training=False)[EXPERT_OUTPUTS].numpy()
    for p in range(3):
        saved = {k: t.numpy() for k, t in network.embedding_tables.items()}
        for key, table in network.embedding_tables.items():
            noise = np.zeros(table.shape, np.float32)
            noise[:, p * e:(p + 1) * e] = np.random.default_rng(p).normal(0, 0.5, (table.shape[0], e))
            table.assign_add(noise)
        after = network(features, training=False)[EXPERT_OUTPUTS].numpy()
        for key, table in network.embedding_tables.items():
            table.assign(saved[key])
        others = [m for m in range(3) if m != p]
        np.testing.assert_array_equal(after[:, others], before[:, others])
        assert np.abs(after[:, p] - before[:, p]).max() > 1e-3


def test_peg_gate_reads_the_prior_tables_and_nothing_else(toy_data, vocab_sizes, tiny_hparams):
    features, _ = _batch(toy_data)
    network = _build(vocab_sizes, tiny_hparams, features).network
    variables = network.trainable_variables
    with tf.GradientTape() as tape:
        weights = network.mixing_weights(network.inputs_layer(features), features)
        target = tf.reduce_sum(weights * tf.random.stateless_normal(weights.shape, seed=[3, 4]))
    gradients = dict(zip([v.name for v in variables], tape.gradient(target, variables)))
    prior_names = {v.name for v in network.prior_tables.values()}
    gate_names = {network.gates.logits.kernel.name, network.gates.logits.bias.name}
    assert len(prior_names) == 3                                      # user, item, domain
    for name, gradient in gradients.items():
        reached = gradient is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(gradient)))) > 0
        assert reached == (name in prior_names | gate_names), name
    # Perturbing everything but the prior tables leaves the weights unchanged.
    before = weights.numpy()
    for table in network.embedding_tables.values():
        table.assign_add(tf.random.stateless_normal(table.shape, seed=[5, 6]))
    changed = dict(features, price_xf=features["price_xf"] + 3.0)
    np.testing.assert_array_equal(network.mixing_weights(network.inputs_layer(changed), changed).numpy(), before)
    user_prior = network.prior_tables["prior_user_id"]
    user_prior.assign_add(tf.random.stateless_normal(user_prior.shape, seed=[7, 8]))
    assert np.abs(network.mixing_weights(network.inputs_layer(features), features).numpy() - before).max() > 1e-4


# ---------------------------------------------------------------- training loss


def numpy_per_domain_bce(labels, logits, domain, num_domains):
    labels, logits = labels.astype(np.float64), logits.astype(np.float64)
    bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return sum(bce[domain == s].mean() for s in range(num_domains) if (domain == s).any())


def numpy_covariance_loss(rows):
    n, m, d = rows.shape
    centred = rows - rows.mean(axis=0)
    return sum(np.abs(centred[:, p].T @ centred[:, q] / (n - 1)).sum()
               for p in range(m) for q in range(p + 1, m)) / d ** 2


def numpy_expected_loss(model, features, labels, lam, l2, rows_key=EXPERT_OUTPUTS, standardise=False,
                        hinge=(0.0, 0.0), shrinkage=0.0, with_cov=True):
    out = {k: v.numpy().astype(np.float64) for k, v in model.network(features, training=True).items()}
    domain = features["domain_id_xf"]
    loss = numpy_per_domain_bce(labels, out[LOGIT], domain, WORLD_FEATURES.num_domains)
    rows = out[rows_key]
    if with_cov:
        cov_in = rows
        if standardise:
            centred = rows - rows.mean(axis=0)
            cov_in = centred / np.sqrt((centred ** 2).mean(axis=0) + 1e-6)
        loss += lam * numpy_covariance_loss(cov_in)
    if hinge[0]:
        loss += hinge[0] * np.maximum(hinge[1] - np.sqrt(rows.var(axis=0) + 1e-4), 0).mean()
    tables = list(model.network.embedding_tables.values()) + list(model.network.prior_tables.values())
    loss += l2 * 0.5 * sum(float(np.sum(t.numpy().astype(np.float64) ** 2)) for t in tables)
    if shrinkage:
        kernel = model.network.domain_gate_kernel.numpy().astype(np.float64)
        loss += shrinkage * 0.5 * np.sum((kernel - kernel.mean(axis=0)) ** 2)
    return loss


@pytest.mark.parametrize("overrides", [
    {"disentangle_rows": N},                                     # rows >= batch: every row
    {"disentangle_rows": 0},                                     # 0: the whole batch
    {"disentangle_rows": 4 * N, "disentangle_sampling": "stratified"},
    {"disentangle_rows": 0, "gate": "pg", "embedding": "se"},
    {"disentangle_rows": 0, "disentangle_loss": "none"},
    {"disentangle_rows": 0, "disentangle_standardise": True},
    {"disentangle_rows": 0, "disentangle_input": "pre_activations", "variance_hinge_weight": 2.0,
     "variance_hinge_target": 0.5},
    {"disentangle_rows": 0, "gate_shrinkage": 0.3},
])
def test_training_loss_is_bce_plus_lambda_covloss_plus_l2(overrides, toy_data, vocab_sizes, tiny_hparams):
    features, labels = _batch(toy_data)
    lam, l2 = 3.0, 1e-2
    model = _build(vocab_sizes, tiny_hparams, features, disentangle_weight=lam, embedding_l2=l2, **overrides)
    for var in (model.network.gates.logits.kernel, model.network.gates.logits.bias):   # shrinkage is not 0
        var.assign(tf.random.stateless_normal(var.shape, seed=[9, 9]))
    got = float(model.compute_loss((features, labels), training=True))
    expected = numpy_expected_loss(
        model, features, labels, lam, l2,
        rows_key=EXPERT_PRE_ACTIVATIONS if overrides.get("disentangle_input") == "pre_activations" else EXPERT_OUTPUTS,
        standardise=overrides.get("disentangle_standardise", False),
        hinge=(overrides.get("variance_hinge_weight", 0.0), overrides.get("variance_hinge_target", 0.0)),
        shrinkage=overrides.get("gate_shrinkage", 0.0),
        with_cov=overrides.get("disentangle_loss", "cov") == "cov")
    assert got == pytest.approx(expected, rel=2e-5)
    # Evaluation: the per-domain BCE alone.
    eval_expected = numpy_per_domain_bce(labels, model.network(features)[LOGIT].numpy(), features["domain_id_xf"], 5)
    assert float(model.compute_loss((features, labels), training=False)) == pytest.approx(eval_expected, rel=1e-5)


def test_none_and_cov_give_different_gradients(toy_data, vocab_sizes, tiny_hparams):
    features, labels = _batch(toy_data)
    gradients = {}
    for loss in ("none", "cov"):
        model = _build(vocab_sizes, tiny_hparams, features, disentangle_loss=loss, disentangle_weight=3.0,
                       disentangle_rows=0)
        kernel = model.network.experts.layers_[0].kernel
        with tf.GradientTape() as tape:
            value = model.compute_loss((features, labels), training=True)
        gradients[loss] = tape.gradient(value, kernel).numpy()
    assert np.abs(gradients["none"] - gradients["cov"]).max() > 1e-6


def test_lambda_warm_up_is_linear_in_optimizer_steps(toy_data, vocab_sizes, tiny_hparams):
    features, labels = _batch(toy_data)
    lam = 2.0
    model = _build(vocab_sizes, tiny_hparams, features, disentangle_weight=lam, disentangle_rows=0,
                   embedding_l2=0.0, disentangle_warmup_steps=10)
    compile_model(model, model.hparams)
    out = model.network(features, training=True)
    bce = numpy_per_domain_bce(labels, out[LOGIT].numpy(), features["domain_id_xf"], 5)
    cov = numpy_covariance_loss(out[EXPERT_OUTPUTS].numpy().astype(np.float64))
    for step, fraction in ((0, 0.0), (4, 0.4), (10, 1.0), (25, 1.0)):
        model.optimizer.iterations.assign(step)
        assert float(model.compute_loss((features, labels), training=True)) == pytest.approx(
            bce + fraction * lam * cov, rel=2e-5)


def test_stratified_rows_give_each_domain_present_an_equal_quota():
    domain = np.array([0] * 1000 + [1] * 10 + [3] * 3, np.int32)
    picked = stratified_row_indices(tf.constant(domain), 30, num_domains=5).numpy()
    assert len(set(picked.tolist())) == len(picked)
    counts = np.bincount(domain[picked], minlength=5)
    np.testing.assert_array_equal(counts, [10, 10, 0, 3, 0])        # quota 30 // 3 present; domain 3 has 3
    uniform_share = 30 * 3 / 1013                                   # what uniform sampling gives domain 3
    assert counts[3] > 10 * uniform_share


def test_training_only_options_leave_the_inference_network_unchanged(toy_data, vocab_sizes, tiny_hparams, tmp_path):
    features, labels = _batch(toy_data)
    plain = _build(vocab_sizes, tiny_hparams, features)
    options = dict(disentangle_rows=0, disentangle_sampling="stratified", disentangle_warmup_steps=5,
                   disentangle_input="pre_activations", disentangle_standardise=True, variance_hinge_weight=1.0,
                   gate_shrinkage=0.1, prior_l2=False)
    other = _build(vocab_sizes, tiny_hparams, features, **options)
    assert [(v.name, v.shape) for v in other.network.variables] == [(v.name, v.shape) for v in plain.network.variables]
    other.network.set_weights(plain.network.get_weights())
    for key in ("logit", "probability", EXPERT_OUTPUTS):
        np.testing.assert_array_equal(other.network(features, training=False)[key].numpy(),
                                      plain.network(features, training=False)[key].numpy())
    tf.saved_model.save(other.network, str(tmp_path / "net"))
    loaded = tf.saved_model.load(str(tmp_path / "net"))
    assert len(loaded.variables) == len(plain.network.variables)
    np.testing.assert_allclose(loaded(features, training=False)["probability"].numpy(),
                               plain.network(features, training=False)["probability"].numpy(), rtol=1e-6)


@pytest.mark.parametrize("bad,match", [({"disentangle_rows": 1}, "disentangle_rows"),
                                       ({"disentangle_sampling": "by_user"}, "disentangle_sampling"),
                                       ({"disentangle_input": "logits"}, "disentangle_input"),
                                       ({"gate_shrinkage": -1.0}, "gate_shrinkage")])
def test_bad_training_options_are_rejected_by_name(bad, match, vocab_sizes, tiny_hparams):
    with pytest.raises(ValueError, match=match):
        build_model("crocodile", WORLD_FEATURES, vocab_sizes, {**tiny_hparams, **bad})


# ---------------------------------------------------------------- baselines' defining properties


def test_stem_domain_loss_does_not_reach_other_domains_experts_or_embedding_sets(toy_data, vocab_sizes, tiny_hparams):
    features, labels = _batch(toy_data, 256)
    tf.keras.utils.set_random_seed(3)
    model = build_model("stem", WORLD_FEATURES, vocab_sizes, tiny_hparams)
    network = model.network
    network(features)
    domain = features["domain_id_xf"]
    e, s = tiny_hparams["embedding_dim"], WORLD_FEATURES.num_domains
    for own in (0, 3):
        rows = {k: v[domain == own] for k, v in features.items()}
        with tf.GradientTape() as tape:
            logit = network(rows, training=True)[LOGIT]
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.cast(labels[domain == own], tf.float32), logits=logit))
        specific = network.specific[0].layers_
        tables = list(network.embedding_tables.values())
        grads = tape.gradient(loss, [layer.kernel for layer in specific] + tables)
        for layer_grad in grads[:len(specific)]:                   # (S*n_sp, in, out): group t = domain t
            per_group = np.abs(tf.convert_to_tensor(layer_grad).numpy()).sum(axis=(1, 2))
            assert per_group[own] > 0
            assert np.all(per_group[[t for t in range(s) if t != own]] == 0.0)
        for table_grad in grads[len(specific):]:                   # sets 0..S-1 specific, set S shared
            dense = np.abs(tf.convert_to_tensor(table_grad).numpy()).reshape(-1, s + 1, e).sum(axis=(0, 2))
            assert dense[own] > 0 and dense[s] > 0
            assert np.all(dense[[t for t in range(s) if t != own]] == 0.0)


def test_mlora_starts_equal_to_its_shared_network(toy_data, vocab_sizes, tiny_hparams):
    features, _ = _batch(toy_data)
    tf.keras.utils.set_random_seed(4)
    network = build_model("mlora", WORLD_FEATURES, vocab_sizes, tiny_hparams).network
    logit = network(features, training=False)[LOGIT].numpy()
    # The shared MLP alone, in NumPy: first embedding set + price, Dense+ReLU layers, Dense logit.
    tables = network.embedding_tables
    x = np.concatenate([tables[k].numpy()[features[transformed_name(k)]] for k in WORLD_FEATURES.categorical]
                       + [features["price_xf"][:, None]], axis=1)
    for layer in network.layers_:
        x = _relu(x @ layer.dense.kernel.numpy() + layer.dense.bias.numpy())
    shared = (x @ network.logit_layer.dense.kernel.numpy() + network.logit_layer.dense.bias.numpy())[:, 0]
    np.testing.assert_allclose(logit, shared, rtol=1e-4, atol=1e-5)
    # A non-zero adapter of domain 1 moves domain 1's rows only.
    network.layers_[0].up.assign(tf.tensor_scatter_nd_update(
        network.layers_[0].up, [[1]], tf.ones([1] + network.layers_[0].up.shape[1:].as_list())))
    moved = network(features, training=False)[LOGIT].numpy() != logit
    np.testing.assert_array_equal(moved, features["domain_id_xf"] == 1)
