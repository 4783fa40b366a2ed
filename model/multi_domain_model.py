"""The trainable model: a `tfrs.Model` wrapping an inference `network`.

Training loss (DESIGN 5.6): sum over domains of the mean BCE of the batch rows of that
domain, + lambda * disentangling loss on `disentangle_rows` sampled rows of the expert
outputs (training only), + embedding L2. Everything here except `network` is training-only
and is never exported.
"""
from typing import Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from crocodile.model.hparams import EXPERT_OUTPUTS, LOGIT, PROBABILITY, HParams
from crocodile.model.inputs import domain_ids
from crocodile.model.losses import disentangle_loss, per_domain_bce, sample_rows


class MultiDomainModel(tfrs.Model):
    def __init__(self, network: tf.keras.Model, hparams: HParams, num_domains: int,
                 disentangle: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
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

    # Models whose training needs statistics of the training split (EDDA's alignment pairs)
    # name the transformed columns here; the Trainer and the benchmark then pass those columns
    # of the training split, and only of it, to `prepare_training_data` before fitting.
    training_data_columns: Tuple[str, ...] = ()

    def prepare_training_data(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Hook for `training_data_columns` (none here)."""

    def auxiliary_loss(self, features, labels, outputs, domain) -> tf.Tensor:
        """Training-only terms of subclasses (CCTL, EDDA), added in the training step only."""
        return tf.constant(0.0)

    def embedding_l2(self) -> tf.Tensor:
        tables = list(self.network.embedding_tables.values())
        return 0.5 * tf.add_n([tf.reduce_sum(tf.square(t)) for t in tables])

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        features, labels = inputs
        outputs = self.network(features, training=training)
        domain = domain_ids(features)
        bce = per_domain_bce(labels, outputs[LOGIT], domain, self.num_domains)
        loss = bce
        if training:
            if self._disentangle_fn is not None and self.hparams.disentangle_weight > 0:
                rows = sample_rows(outputs[EXPERT_OUTPUTS], self.hparams.disentangle_rows)
                disentangle = self._disentangle_fn(rows)
                self.disentangle_tracker.update_state(disentangle)
                loss += self.hparams.disentangle_weight * disentangle
            if self.hparams.embedding_l2 > 0:
                loss += self.hparams.embedding_l2 * self.embedding_l2()
            loss += self.auxiliary_loss(features, labels, outputs, domain)
            # Per-replica means: the optimizer sums replicas' gradients under tf.distribute.
            loss = loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
        self.bce_tracker.update_state(bce)
        self.auc.update_state(tf.reshape(tf.cast(labels, tf.float32), [-1]), outputs[PROBABILITY])
        return loss
