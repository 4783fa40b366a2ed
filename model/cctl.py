"""CCTL (Zhang et al., KDD 2023: Collaborative Cross-Domain Transfer Learning) for S domains.

Marks: (P) the paper, (I) our reading where it is silent (no public code exists).

Every domain is a target in turn (I, the issue's choice): one serving model must score every
domain, so training one model per target domain would mean S models to export, route and
roll out. Domain t's tower is the mixed tower of target t; the rows of the other domains are
its source samples.

- Serving network (`model.network`, exported): one shared embedding set, a shared bottom MLP
  and one tower per domain; a row is scored by its own domain's tower. It is trained as the
  MIXED network: tower t on target t's rows (weight 1) and on every other row i with a
  transfer weight w_it (P), each part a mean over its rows (I):
  `L_mixed = sum_t [ mean_{i in t} BCE_it + sum_{i not in t} w_it BCE_it / n_source_t ]`.
  The denominators are row counts, not sums of weights, so a weight scales its sample's loss
  exactly (`source_weighted_bce`).
- Symmetric companion network (P), training only: the PURE network, a copy of the serving
  network's architecture trained on target rows only (each row trains its own domain's tower),
  whose parameters are set to the mixed network's every `cctl_sync_every` = k steps (P; I:
  the direction pure <- mixed, at the start of steps 0, k, 2k, ...; optimizer slots are not
  copied). The information gain of target t is `BCE_pure(t) - BCE_mixed(t)` on the batch's
  target rows (P), logged as the metric `information_gain`.
- Information flow network (P), training only: w_it = sigmoid(MLP([stop_gradient(shared
  representation of row i), one-hot domain of i]))[t] (I: inputs and sizes). Its training
  signal (I: the paper's exact objective is not available to us) is the companion gain split
  over source samples to first order: one step on source sample i moves tower t's loss on
  target t by -lr <grad L_t, grad l_it>, so the IFN maximises
  `sum_t mean_{i not in t} w_it * r_it`, r_it = <grad L_t(pure), grad l_it(mixed)> over tower
  t's last layer (closed form: residual times [hidden, 1]), the pure network's gradient being
  the target-only direction; r is divided by its root mean square per target (I) so the IFN's
  step size does not depend on the loss scale. Weights and rewards are stop-gradient where
  they enter the other network's loss.
- Representation enhancement network (P), training only: an auxiliary contrastive task that
  keeps domain-specific features in the shared representation (I: supervised contrastive
  loss with the row's domain as the class, on a linear projection head, L2-normalised, over
  `cctl_contrastive_rows` sampled rows, temperature `cctl_contrastive_temperature`), weight
  `cctl_contrastive_weight`.

Ablations: `cctl_information_flow = False` (uniform source weights 1; no companion, no IFN),
`cctl_contrastive_weight = 0` (no representation enhancement), `cctl_sync_every`.
Under tf.distribute with several replicas the parameter copy has not been tested.
"""
from typing import Dict

import tensorflow as tf

from crocodile.model.blocks import GroupedDense, GroupedMLP, mlp, select_domain
from crocodile.model.features import DOMAIN_KEY, FeatureConfig, transformed_name
from crocodile.model.hparams import LOGIT, PROBABILITY
from crocodile.model.losses import per_domain_bce
from crocodile.model.multi_domain_model import MultiDomainModel
from crocodile.model.network_base import DomainNetwork, single_set_input

DOMAIN_LOGITS = "domain_logits"        # (N, S): every domain's tower on every row
TOWER_HIDDEN = "tower_hidden"          # (N, S, d): each tower's last hidden layer
REPRESENTATION = "representation"      # (N, d): the shared bottom's output


class CCTLNetwork(DomainNetwork):
    """Shared embedding + bottom MLP + one tower per domain; the mixed network of every target."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        if not hparams.tower_units:
            raise ValueError("cctl needs at least one tower hidden layer (tower_units)")
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        s = self.num_domains
        self.bottom = mlp(hparams.expert_units, name="bottom")
        self.tower_hidden = GroupedMLP(s, hparams.tower_units, final_activation="relu", name="tower_hidden")
        self.tower_logit = GroupedDense(s, 1, name="tower_logit")

    def call(self, features, training=None):
        inputs = self.inputs_layer(features)
        representation = self.bottom(single_set_input(inputs))
        hidden = self.tower_hidden(representation)                               # (N, S, d)
        domain_logits = self.tower_logit(hidden)[..., 0]                         # (N, S)
        logit = tf.reshape(select_domain(domain_logits, inputs["domain"]), [-1])
        return {LOGIT: logit, PROBABILITY: tf.sigmoid(logit), DOMAIN_LOGITS: domain_logits,
                TOWER_HIDDEN: hidden, REPRESENTATION: representation}


def source_weighted_bce(labels, domain_logits, domain, weights, num_domains: int) -> tf.Tensor:
    """sum_t sum_{i: domain_i != t} w_it * BCE(y_i, logit_it) / n_source_t (0 for a target
    with no source rows). labels (N,), domain_logits and weights (N, S), domain (N,)."""
    labels = tf.cast(tf.reshape(labels, [-1, 1]), tf.float32)
    logits = tf.cast(domain_logits, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.broadcast_to(labels, tf.shape(logits)), logits=logits)
    source = 1.0 - tf.one_hot(domain, num_domains)
    per_target = tf.math.divide_no_nan(tf.reduce_sum(weights * source * bce, axis=0), tf.reduce_sum(source, axis=0))
    return tf.reduce_sum(per_target)


def first_order_gain(labels, mixed_outputs, pure_outputs, domain, num_domains: int) -> tf.Tensor:
    """r_it = <grad of target t's mean BCE under the pure tower t, grad of BCE_it under the
    mixed tower t>, both w.r.t. tower t's last layer (kernel and bias), shape (N, S)."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
    pure_own_logit = select_domain(pure_outputs[DOMAIN_LOGITS], domain)
    pure_own_hidden = select_domain(pure_outputs[TOWER_HIDDEN], domain)                  # (N, d)
    pure_residual = tf.sigmoid(pure_own_logit) - labels
    target_grad = tf.math.unsorted_segment_mean(
        pure_residual[:, None] * tf.concat([pure_own_hidden, tf.ones_like(pure_own_hidden[:, :1])], axis=1),
        domain, num_domains)                                                           # (S, d + 1)
    hidden = mixed_outputs[TOWER_HIDDEN]
    mixed_residual = tf.sigmoid(mixed_outputs[DOMAIN_LOGITS]) - labels[:, None]         # (N, S)
    projection = tf.einsum("nsd,sd->ns", hidden, target_grad[:, :-1]) + target_grad[None, :, -1]
    return mixed_residual * projection


def domain_contrastive_loss(projected, domain, temperature: float) -> tf.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) with the domain as the class: for each
    row with another row of its domain, -mean over those positives of log softmax_{j != i}
    (cos(z_i, z_j) / temperature); averaged over such rows (0 if none)."""
    z = tf.math.l2_normalize(tf.cast(projected, tf.float32), axis=1, epsilon=1e-12)
    n = tf.shape(z)[0]
    eye = tf.eye(n)
    logits = tf.matmul(z, z, transpose_b=True) / temperature - 1e9 * eye
    log_prob = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
    positive = tf.cast(tf.equal(domain[:, None], domain[None, :]), tf.float32) * (1.0 - eye)
    count = tf.reduce_sum(positive, axis=1)
    per_row = -tf.math.divide_no_nan(tf.reduce_sum(positive * log_prob, axis=1), count)
    has = tf.cast(count > 0, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(per_row * has), tf.reduce_sum(has))


class CCTLModel(MultiDomainModel):
    """Training model: the base loss (target part of L_mixed + embedding L2) plus, in training
    only, the source part of L_mixed, the pure network's loss, the IFN objective and the
    contrastive loss. Only `network` is exported."""

    def __init__(self, network: CCTLNetwork, pure_network, hparams, num_domains: int, **kwargs):
        super().__init__(network, hparams, num_domains, **kwargs)
        h = hparams
        if h.cctl_sync_every < 1:
            raise ValueError(f"cctl_sync_every must be >= 1, got {h.cctl_sync_every}")
        self.flow = bool(h.cctl_information_flow)
        self.pure = pure_network if self.flow else None
        self.information_flow = (mlp(list(h.cctl_ifn_units) + [num_domains], final_activation="sigmoid",
                                     name="information_flow") if self.flow else None)
        self.projection = (tf.keras.layers.Dense(h.cctl_projection_dim, name="contrastive_projection")
                           if h.cctl_contrastive_weight > 0 else None)
        self.sync_step = tf.Variable(0, trainable=False, dtype=tf.int64, name="sync_step")
        self.syncs_done = tf.Variable(0, trainable=False, dtype=tf.int64, name="syncs_done")
        self.gain_tracker = tf.keras.metrics.Mean(name="information_gain")
        self.weight_tracker = tf.keras.metrics.Mean(name="source_weight")
        self.contrastive_tracker = tf.keras.metrics.Mean(name="contrastive_loss")

    def _copy_to_pure(self, due=True):
        # A select instead of tf.cond: a cond over every variable made the first trace of the
        # train step ~8x slower here, and the copy is cheap next to a training step.
        for pure_var, mixed_var in zip(self.pure.variables, self.network.variables):
            pure_var.assign(tf.where(due, mixed_var, pure_var))
        self.syncs_done.assign_add(tf.cast(due, tf.int64))

    def synchronise_if_due(self):
        """pure <- mixed at the start of steps 0, k, 2k, ... (k = cctl_sync_every)."""
        if self.pure is None:
            return
        self._copy_to_pure(tf.equal(self.sync_step % self.hparams.cctl_sync_every, 0))
        self.sync_step.assign_add(1)

    # No tensor-dependent Python control flow here: without this, autograph converts the whole
    # tfrs/Keras train step underneath and the first trace took minutes instead of seconds.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, inputs):
        self.synchronise_if_due()
        return super().train_step(inputs)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, inputs):
        return super().test_step(inputs)

    def source_weights(self, outputs, domain) -> tf.Tensor:
        """(N, S) transfer weights w_it of the IFN (uniform 1 without it)."""
        if self.information_flow is None:
            return tf.ones_like(outputs[DOMAIN_LOGITS])
        ifn_input = tf.concat([tf.stop_gradient(outputs[REPRESENTATION]), tf.one_hot(domain, self.num_domains)], axis=1)
        return self.information_flow(ifn_input)

    def auxiliary_loss(self, features, labels, outputs, domain) -> tf.Tensor:
        s, h = self.num_domains, self.hparams
        weights = self.source_weights(outputs, domain)
        source_mask = 1.0 - tf.one_hot(domain, s)
        total = source_weighted_bce(labels, outputs[DOMAIN_LOGITS], domain, tf.stop_gradient(weights), s)
        self.weight_tracker.update_state(tf.math.divide_no_nan(
            tf.reduce_sum(weights * source_mask), tf.reduce_sum(source_mask)))
        if self.pure is not None:
            pure_outputs = self.pure(features, training=True)
            total += per_domain_bce(labels, pure_outputs[LOGIT], domain, s)
            if h.embedding_l2 > 0:
                total += h.embedding_l2 * 0.5 * tf.add_n(
                    [tf.reduce_sum(tf.square(t)) for t in self.pure.embedding_tables.values()])
            self.gain_tracker.update_state(self._information_gain(labels, outputs, pure_outputs, domain))
            reward = tf.stop_gradient(first_order_gain(labels, outputs, pure_outputs, domain, s))
            rms = tf.sqrt(tf.math.divide_no_nan(tf.reduce_sum(tf.square(reward) * source_mask, axis=0),
                                                tf.reduce_sum(source_mask, axis=0)))
            reward = tf.math.divide_no_nan(reward, rms + 1e-12)
            total -= tf.reduce_sum(tf.math.divide_no_nan(
                tf.reduce_sum(weights * reward * source_mask, axis=0), tf.reduce_sum(source_mask, axis=0)))
        if self.projection is not None:
            rows = tf.minimum(tf.shape(domain)[0], h.cctl_contrastive_rows)
            pick = tf.argsort(tf.random.uniform(tf.shape(domain)))[:rows]
            contrastive = domain_contrastive_loss(
                self.projection(tf.gather(outputs[REPRESENTATION], pick)), tf.gather(domain, pick),
                h.cctl_contrastive_temperature)
            self.contrastive_tracker.update_state(contrastive)
            total += h.cctl_contrastive_weight * contrastive
        return total

    def _information_gain(self, labels, mixed_outputs, pure_outputs, domain) -> tf.Tensor:
        """Mean over the batch's domains t of BCE_pure(t) - BCE_mixed(t) on t's rows."""
        labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
        s = self.num_domains

        def per_domain(logit):
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logit)
            return tf.math.unsorted_segment_mean(bce, domain, s)

        present = tf.cast(tf.math.unsorted_segment_sum(tf.ones_like(labels), domain, s) > 0, tf.float32)
        gain = per_domain(pure_outputs[LOGIT]) - per_domain(mixed_outputs[LOGIT])
        return tf.math.divide_no_nan(tf.reduce_sum(gain * present), tf.reduce_sum(present))


def _placeholder_batch(feature_config: FeatureConfig) -> Dict[str, tf.Tensor]:
    """One all-zero row of every model input: builds a network's variables eagerly."""
    batch = {transformed_name(k): tf.zeros([1], tf.int64) for k in feature_config.categorical}
    batch.update({transformed_name(k): tf.zeros([1], tf.float32) for k in feature_config.numeric})
    batch[transformed_name(DOMAIN_KEY)] = tf.zeros([1], tf.int64)
    return batch


def build_cctl_model(network: CCTLNetwork, hparams, feature_config: FeatureConfig, vocab_sizes, name: str):
    """Both networks are built here, so the pure network's variables line up one to one with
    the serving network's for the parameter copy."""
    batch = _placeholder_batch(feature_config)
    network(batch)
    pure = None
    if hparams.cctl_information_flow:
        pure = CCTLNetwork(feature_config, vocab_sizes, hparams, name="cctl_pure_network")
        pure(batch)
        if [v.shape for v in pure.variables] != [v.shape for v in network.variables]:
            raise RuntimeError("cctl: pure and serving networks differ in their variables")
    model = CCTLModel(network, pure, hparams, feature_config.num_domains, name=name)
    if pure is not None:
        model._copy_to_pure()
        model.syncs_done.assign(0)
    return model
