"""Base class of every model's inference network (`model.network`).

A network maps the dict of transformed features to a dict with 'logit' (N,),
'probability' (N,) and, where it has experts, 'expert_outputs' (N, M, d). It holds the
whole inference path and nothing used only in training (DESIGN 5.7): losses, optimizer
state and metrics live on the outer `MultiDomainModel`.
"""
from typing import Dict, Mapping

import tensorflow as tf

from crocodile.model.features import FeatureConfig
from crocodile.model.hparams import EXPERT_OUTPUTS, LOGIT, PROBABILITY, HParams
from crocodile.model.inputs import FeatureInput


def with_dense(per_group: tf.Tensor, dense: tf.Tensor) -> tf.Tensor:
    """(N, G, K) embeddings and (N, P) numeric features -> (N, G, K + P)."""
    groups = tf.shape(per_group)[1]
    tiled = tf.tile(dense[:, tf.newaxis, :], [1, groups, 1])
    return tf.concat([per_group, tiled], axis=-1)


class DomainNetwork(tf.keras.Model):
    """Holds the input layer; subclasses implement `forward(inputs, features, training)`
    returning (logit, extras): extras is None, the expert outputs, or a dict of named outputs."""

    def __init__(self, feature_config: FeatureConfig, vocab_sizes: Mapping[str, int], hparams: HParams,
                 num_embedding_sets: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = feature_config
        self.hparams = hparams
        self.num_domains = feature_config.num_domains
        self.inputs_layer = FeatureInput(feature_config, vocab_sizes, hparams.embedding_dim,
                                         num_embedding_sets, hparams.embedding_init_stddev, name="features")

    @property
    def embedding_tables(self) -> Dict[str, tf.Variable]:
        """Categorical field -> its (vocab, M*e) table (for the L2 term and diagnostics)."""
        layer = self.inputs_layer.embedding
        return {key: layer.table_for(key) for key in layer.keys}

    @property
    def num_embedding_sets(self) -> int:
        return self.inputs_layer.embedding.num_sets

    def forward(self, inputs: Dict[str, tf.Tensor], features, training):
        raise NotImplementedError

    def call(self, features, training=None):
        inputs = self.inputs_layer(features)
        logit, extras = self.forward(inputs, features, training)
        logit = tf.reshape(tf.cast(logit, tf.float32), [-1])
        outputs = {LOGIT: logit, PROBABILITY: tf.sigmoid(logit)}
        if isinstance(extras, dict):        # named extras (e.g. training-only ones)
            outputs.update(extras)
        elif extras is not None:
            outputs[EXPERT_OUTPUTS] = extras
        return outputs


def single_set_input(inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """(N, F*e + P): the first embedding set and the numeric features."""
    return tf.concat([inputs["embeddings"][:, 0, :], inputs["dense"]], axis=1)
