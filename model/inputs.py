"""Input layer: transformed features -> embedding sets, dense features, domain ids.

Multi-embedding (DESIGN 5.1): one table of width M*e per categorical field and one
lookup per field, reshaped to (N, M, F*e), as STEM does with its single wide table.
M = 1 is the usual single embedding. Tables are shared by all domains; models that
need domain-specific sets (ME-PLE, STEM, single-domain) ask for more sets and pick.
"""
from typing import Dict, Mapping, Sequence

import tensorflow as tf

from crocodile.model.features import DOMAIN_KEY, FeatureConfig, transformed_name


def domain_ids(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The [N] int32 domain index of each row."""
    return tf.cast(tf.reshape(features[transformed_name(DOMAIN_KEY)], [-1]), tf.int32)


class EmbeddingTables(tf.keras.layers.Layer):
    """`num_sets` embedding sets of width `dim` for the given categorical fields.

    call(features) -> (N, num_sets, F*dim). `tables` lists the variables (for the
    embedding L2 and the diagnostics); `table_for(key)` returns one field's table.
    """

    def __init__(self, keys: Sequence[str], vocab_sizes: Mapping[str, int], dim: int,
                 num_sets: int, init_stddev: float, **kwargs):
        super().__init__(**kwargs)
        missing = [k for k in keys if k not in vocab_sizes]
        if missing:
            raise ValueError(f"vocab_sizes lacks categorical feature(s) {missing}")
        self.keys = tuple(keys)
        self.dim = dim
        self.num_sets = num_sets
        self._vocab_sizes = {k: int(vocab_sizes[k]) for k in self.keys}
        self.init_stddev = init_stddev

    def build(self, input_shape):
        self._tables = {
            key: self.add_weight(
                name=f"{key}_table", shape=(self._vocab_sizes[key], self.num_sets * self.dim),
                # A new initializer per table: one unseeded instance repeats its values.
                initializer=tf.keras.initializers.RandomNormal(stddev=self.init_stddev), trainable=True)
            for key in self.keys
        }
        super().build(input_shape)

    @property
    def tables(self):
        return [self._tables[k] for k in self.keys]

    def table_for(self, key: str) -> tf.Variable:
        return self._tables[key]

    def call(self, features):
        looked_up = []
        for key in self.keys:
            ids = tf.reshape(features[transformed_name(key)], [-1])
            rows = tf.gather(self._tables[key], ids)                    # (N, M*e): one lookup
            looked_up.append(tf.reshape(rows, [-1, self.num_sets, self.dim]))
        return tf.concat(looked_up, axis=-1)                              # (N, M, F*e)


class DomainEmbedding(tf.keras.layers.Layer):
    """A small table indexed by domain id (PEPNet, STAR auxiliary net, HiNet, AdaSparse)."""

    def __init__(self, num_domains: int, dim: int, init_stddev: float, **kwargs):
        super().__init__(**kwargs)
        self.num_domains, self.dim, self.init_stddev = num_domains, dim, init_stddev

    def build(self, input_shape):
        self.table = self.add_weight(name="domain_table", shape=(self.num_domains, self.dim),
                                     initializer=tf.keras.initializers.RandomNormal(stddev=self.init_stddev))
        super().build(input_shape)

    def call(self, domain):
        return tf.gather(self.table, domain)


class FeatureInput(tf.keras.layers.Layer):
    """Embedding sets of every categorical field plus the numeric features.

    call(features) -> dict: 'embeddings' (N, M, F*e), 'dense' (N, P) (P may be 0),
    'domain' (N,) int32.
    """

    def __init__(self, feature_config: FeatureConfig, vocab_sizes: Mapping[str, int],
                 dim: int, num_sets: int, init_stddev: float, **kwargs):
        super().__init__(**kwargs)
        self.feature_config = feature_config
        self.embedding = EmbeddingTables(feature_config.categorical, vocab_sizes, dim, num_sets,
                                         init_stddev, name="embedding")

    @property
    def num_fields(self) -> int:
        return len(self.feature_config.categorical)

    def call(self, features) -> Dict[str, tf.Tensor]:
        numeric = [tf.reshape(tf.cast(features[transformed_name(k)], tf.float32), [-1, 1])
                   for k in self.feature_config.numeric]
        domain = domain_ids(features)
        if numeric:
            dense = tf.concat(numeric, axis=1)
        else:
            dense = tf.zeros([tf.shape(domain)[0], 0], tf.float32)
        return {"embeddings": self.embedding(features), "dense": dense, "domain": domain}


class PriorEmbeddings(tf.keras.layers.Layer):
    """Crocodile's prior embeddings (DESIGN 5.4): separate tables for user id, item id and
    domain id, concatenated to r (N, F_p * e_p). They are not the sample's embeddings."""

    def __init__(self, feature_config: FeatureConfig, vocab_sizes: Mapping[str, int], dim: int,
                 init_stddev: float, **kwargs):
        super().__init__(**kwargs)
        self.fields = tuple(f for f in feature_config.prior_fields if f != DOMAIN_KEY)
        self.use_domain = DOMAIN_KEY in feature_config.prior_fields
        self.tables = EmbeddingTables(self.fields, vocab_sizes, dim, 1, init_stddev, name="prior")
        self.domain_table = (DomainEmbedding(feature_config.num_domains, dim, init_stddev,
                                             name="prior_domain") if self.use_domain else None)

    def call(self, features):
        parts = [tf.reshape(self.tables(features), [-1, len(self.fields) * self.tables.dim])]
        if self.use_domain:
            parts.append(self.domain_table(domain_ids(features)))
        return tf.concat(parts, axis=1)
