"""The trainable model: a `tfrs.Model` wrapping an inference `network`.

Training loss (DESIGN 5.6): sum over domains of the mean BCE of the batch rows of that
domain, + lambda * disentangling loss on `disentangle_rows` sampled rows of the expert
outputs (training only), + embedding L2 (the prior tables included), + the optional tail
and study terms of `HParams` (lambda warm-up, stratified rows, variance hinge, gate
shrinkage). Everything here except `network` is training-only and is never exported.
"""
from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from crocodile.model.hparams import (EXPERT_OUTPUTS, EXPERT_PRE_ACTIVATIONS, LOGIT, PROBABILITY, HParams,
                                     check_training_options)
from crocodile.model.inputs import domain_ids
from crocodile.model.losses import (disentangle_loss, per_domain_bce, sample_rows, standardise_units,
                                    stratified_row_indices, variance_hinge)

DISENTANGLE_INPUTS = {"outputs": EXPERT_OUTPUTS, "pre_activations": EXPERT_PRE_ACTIVATIONS}


class MultiDomainModel(tfrs.Model):
    def __init__(self, network: tf.keras.Model, hparams: HParams, num_domains: int,
                 disentangle: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        check_training_options(hparams)
        self.network = network
        self.hparams = hparams
        self.num_domains = num_domains
        self.disentangle_name = None if disentangle in (None, "none") else disentangle
        self._disentangle_fn = disentangle_loss(self.disentangle_name) if self.disentangle_name else None
        self.auc = tf.keras.metrics.AUC(name="auc", num_thresholds=1000)
        self.bce_tracker = tf.keras.metrics.Mean(name="bce")
        self.disentangle_tracker = tf.keras.metrics.Mean(name="disentangle_loss")

    def call(self, features, training=None):
        return self.network(features, training=training)

    def regularised_tables(self):
        """Tables under the embedding L2: every embedding table, and the prior tables
        (user, item, domain) unless `prior_l2` is off."""
        tables = list(self.network.embedding_tables.values())
        if self.hparams.prior_l2:
            tables += list(getattr(self.network, "prior_tables", {}).values())
        return tables

    def embedding_l2(self) -> tf.Tensor:
        return 0.5 * tf.add_n([tf.reduce_sum(tf.square(t)) for t in self.regularised_tables()])

    def gate_shrinkage(self) -> tf.Tensor:
        """1/2 * sum_s ||W_s - mean_s W_s||^2 over the per-domain gate kernels (I)."""
        kernel = self.network.domain_gate_kernel
        return 0.5 * tf.reduce_sum(tf.square(kernel - tf.reduce_mean(kernel, axis=0, keepdims=True)))

    def disentangle_weight(self) -> tf.Tensor:
        """lambda, ramped linearly from 0 over `disentangle_warmup_steps` optimizer steps (I)."""
        weight = tf.constant(self.hparams.disentangle_weight, tf.float32)
        steps = self.hparams.disentangle_warmup_steps
        optimizer = getattr(self, "optimizer", None)
        if steps <= 0 or optimizer is None:
            return weight
        done = tf.cast(optimizer.iterations, tf.float32)
        return weight * tf.minimum(1.0, done / float(steps))

    def disentangle_rows(self, outputs, domain) -> tf.Tensor:
        """The (n, M, d) rows the disentangling loss and the variance hinge read."""
        h = self.hparams
        key = DISENTANGLE_INPUTS[h.disentangle_input]
        if key not in outputs:
            raise ValueError(f"disentangle_input={h.disentangle_input!r}: the network does not return {key!r} "
                             "in training (only crocodile does)")
        values = outputs[key]
        if h.disentangle_sampling == "stratified" and h.disentangle_rows > 0:
            return tf.gather(values, stratified_row_indices(domain, h.disentangle_rows, self.num_domains))
        return sample_rows(values, h.disentangle_rows)

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, labels = inputs
        outputs = self.network(features, training=training)
        domain = domain_ids(features)
        bce = per_domain_bce(labels, outputs[LOGIT], domain, self.num_domains)
        loss = bce
        if training:
            h = self.hparams
            use_disentangle = self._disentangle_fn is not None and h.disentangle_weight > 0
            if use_disentangle or h.variance_hinge_weight > 0:
                rows = self.disentangle_rows(outputs, domain)
            if use_disentangle:
                disentangle = self._disentangle_fn(standardise_units(rows) if h.disentangle_standardise else rows)
                self.disentangle_tracker.update_state(disentangle)
                loss += self.disentangle_weight() * disentangle
            if h.variance_hinge_weight > 0:
                loss += h.variance_hinge_weight * variance_hinge(rows, h.variance_hinge_target)
            if h.embedding_l2 > 0:
                loss += h.embedding_l2 * self.embedding_l2()
            if h.gate_shrinkage > 0 and hasattr(self.network, "domain_gate_kernel"):   # models read what they use
                loss += h.gate_shrinkage * self.gate_shrinkage()
            # Per-replica means: the optimizer sums replicas' gradients under tf.distribute.
            loss = loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
        self.bce_tracker.update_state(bce)
        self.auc.update_state(tf.reshape(tf.cast(labels, tf.float32), [-1]), outputs[PROBABILITY])
        return loss
