"""EDDA (Ning et al., CIKM 2023) as a multi-domain CTR ranker: embedding disentangling
plus domain alignment.

What carries over from the paper and what does not: EDDA is a graph recommender (GRec
propagation) trained with BPR for retrieval. A CTR ranker scores given (user, item,
domain) rows, so the graph propagation and BPR are dropped; the disentangled embeddings
and the alignment loss are kept, on this project's per-domain BCE.

- Embedding disentangling (P): every categorical field has an inter-domain embedding shared
  by all domains; users and items also have an intra-domain embedding per domain (I: only
  user and item ids, as in the paper, whose embeddings are user/item embeddings only), of
  the same size e (I; the paper's code splits 64 = 32 shared + 32 per domain).
- Each feeds its own part (P): the inter part is one shared MLP over the inter-domain
  embeddings (+ numeric features); the intra part is the row's own domain's MLP over the
  linearly mapped intra-domain user and item embeddings (+ numeric features). Their outputs
  are concatenated into the row's own domain's tower (I: the towers).
- Linear maps (P: "linearly mapped"): one (e, e) map per domain for users and one for items,
  initialised to the identity, used in prediction as the intra part's first layer (I:
  maps used only by the alignment loss would shrink to 0 and make it meaningless).
- Domain alignment (P), training only: for cross-domain pairs of similar users (items), the
  mean over pairs of the squared distance between the L2-normalised mapped intra-domain
  embeddings, 2 - 2 cos (I: normalised, so the loss cannot fall by shrinking the maps;
  squared, so the gradient is finite at 0), times `edda_alignment_weight` (I: 0.1; the
  paper's code applies it as a separate optimiser step after each BPR epoch, we add it to
  every training step). `edda_alignment_batch` pairs of each kind are sampled per step
  (I), all of them when there are fewer.
- The pairs come from model/edda_alignment.py on the TRAINING split (`prepare_training_data`,
  called by the TFX Trainer and by the benchmark); they are constants of the training step,
  never part of `network`.

Ablations: `edda_alignment_weight = 0` (no alignment), `edda_intra_embeddings = False`
(the intra part reads the shared user / item embeddings: model-level disentangling only).
"""
import logging
from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

from crocodile.model.blocks import DomainTowers, GroupedMLP, mlp, select_domain
from crocodile.model.edda_alignment import ITEM, USER, AlignmentPairs, alignment_pairs
from crocodile.model.features import DOMAIN_KEY, ITEM_KEY, LABEL_KEY, USER_KEY, FeatureConfig, transformed_name
from crocodile.model.inputs import EmbeddingTables
from crocodile.model.multi_domain_model import MultiDomainModel
from crocodile.model.network_base import DomainNetwork

log = logging.getLogger(__name__)

_KEYS = {USER: USER_KEY, ITEM: ITEM_KEY}
WALK_EDGES = ("click", "impression")


class DomainLinearMaps(tf.keras.layers.Layer):
    """One (dim, dim) linear map per domain, initialised to the identity."""

    def __init__(self, num_domains: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_domains, self.dim = num_domains, dim

    def build(self, input_shape):
        identity = np.tile(np.eye(self.dim, dtype=np.float32)[None], [self.num_domains, 1, 1])
        self.kernel = self.add_weight(name="kernel", shape=(self.num_domains, self.dim, self.dim),
                                      initializer=tf.keras.initializers.Constant(identity))
        super().build(input_shape)

    def call(self, x, domain):
        return tf.einsum("ne,nef->nf", x, tf.gather(self.kernel, domain))


class EDDANetwork(DomainNetwork):
    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        s, e = self.num_domains, hparams.embedding_dim
        self.fields = list(feature_config.categorical)
        self.intra = (EmbeddingTables((USER_KEY, ITEM_KEY), vocab_sizes, e, s, hparams.embedding_init_stddev,
                                      name="intra_embedding") if hparams.edda_intra_embeddings else None)
        self.maps = {USER: DomainLinearMaps(s, e, name="user_map"), ITEM: DomainLinearMaps(s, e, name="item_map")}
        self.inter_mlp = mlp(hparams.expert_units, name="inter_mlp")
        self.intra_mlps = GroupedMLP(s, hparams.expert_units, final_activation="relu", name="intra_mlps")
        self.towers = DomainTowers(s, hparams.tower_units, name="domain_towers")

    def mapped_intra(self, kind: str, ids: tf.Tensor, domain: tf.Tensor) -> tf.Tensor:
        """(n, e): the intra-domain embedding of `ids` (user or item) in `domain`, mapped by that
        domain's linear map. Without intra embeddings: the shared embedding, mapped."""
        key, e = _KEYS[kind], self.hparams.embedding_dim
        ids = tf.cast(tf.reshape(ids, [-1]), tf.int32)
        domain = tf.cast(tf.reshape(domain, [-1]), tf.int32)
        if self.intra is not None:
            # Row id*S + d of the (vocab*S, e) view is id's embedding in domain d: one gather.
            table = tf.reshape(self.intra.table_for(key), [-1, e])
            rows = tf.gather(table, ids * self.num_domains + domain)
        else:
            rows = tf.gather(self.inputs_layer.embedding.table_for(key), ids)      # one set: (vocab, e)
        return self.maps[kind](rows, domain)

    def forward(self, inputs, features, training):
        domain, e = inputs["domain"], self.hparams.embedding_dim
        if self.intra is not None:
            own = select_domain(self.intra(features), domain)                      # (N, 2e): user, item
            user, item = own[:, :e], own[:, e:]
        else:
            shared = inputs["embeddings"][:, 0, :]
            user, item = (shared[:, i * e:(i + 1) * e] for i in (self.fields.index(USER_KEY), self.fields.index(ITEM_KEY)))
        mapped = [self.maps[USER](user, domain), self.maps[ITEM](item, domain)]
        intra_out = select_domain(self.intra_mlps(tf.concat(mapped + [inputs["dense"]], axis=1)), domain)
        inter_out = self.inter_mlp(tf.concat([inputs["embeddings"][:, 0, :], inputs["dense"]], axis=1))
        return self.towers(tf.concat([inter_out, intra_out], axis=1), domain), None

    @property
    def intra_tables(self) -> Dict[str, tf.Variable]:
        if self.intra is None:
            return {}
        return {f"{key}_intra": self.intra.table_for(key) for key in self.intra.keys}


def alignment_loss(mapped_a: tf.Tensor, mapped_b: tf.Tensor) -> tf.Tensor:
    """Mean over pairs of ||a/|a| - b/|b|||^2 = 2 - 2 cos(a, b); 0 for no pairs."""
    a = tf.math.l2_normalize(tf.cast(mapped_a, tf.float32), axis=-1, epsilon=1e-12)
    b = tf.math.l2_normalize(tf.cast(mapped_b, tf.float32), axis=-1, epsilon=1e-12)
    squared = tf.reduce_sum(tf.square(a - b), axis=-1)
    return tf.math.divide_no_nan(tf.reduce_sum(squared), tf.cast(tf.size(squared), tf.float32))


def pairs_from_training_arrays(arrays: Mapping[str, np.ndarray], hparams, vocab_sizes: Mapping[str, int],
                               num_oov_buckets: int) -> Dict[str, AlignmentPairs]:
    """EDDA's alignment pairs from transformed TRAINING arrays (`*_xf` ids and the label).

    Out-of-vocabulary ids (the OOV buckets, one id shared by many rare users or items) are
    not graph nodes: a shared bucket would connect unrelated users."""
    if hparams.edda_walk_edges not in WALK_EDGES:
        raise ValueError(f"edda_walk_edges must be one of {WALK_EDGES}, got {hparams.edda_walk_edges!r}")
    users = np.asarray(arrays[transformed_name(USER_KEY)]).reshape(-1)
    items = np.asarray(arrays[transformed_name(ITEM_KEY)]).reshape(-1)
    domains = np.asarray(arrays[transformed_name(DOMAIN_KEY)]).reshape(-1)
    keep = (users < vocab_sizes[USER_KEY] - num_oov_buckets) & (items < vocab_sizes[ITEM_KEY] - num_oov_buckets)
    if hparams.edda_walk_edges == "click":
        keep &= np.asarray(arrays[LABEL_KEY]).reshape(-1) > 0
    return alignment_pairs(users[keep], items[keep], domains[keep], walks_per_node=hparams.edda_walks_per_node,
                           user_walk_length=hparams.edda_user_walk_length,
                           item_walk_length=hparams.edda_item_walk_length, top_k=hparams.edda_top_k,
                           max_anchors=hparams.edda_max_anchors, seed=hparams.seed)


class EDDAModel(MultiDomainModel):
    """The training model: per-domain BCE + embedding L2 (intra tables included) + the
    alignment loss over the attached pairs, in training only."""

    training_data_columns = (transformed_name(USER_KEY), transformed_name(ITEM_KEY),
                             transformed_name(DOMAIN_KEY), LABEL_KEY)

    def __init__(self, network: EDDANetwork, hparams, num_domains: int, vocab_sizes: Mapping[str, int],
                 num_oov_buckets: int, **kwargs):
        super().__init__(network, hparams, num_domains, **kwargs)
        self._vocab_sizes = dict(vocab_sizes)
        self._num_oov_buckets = num_oov_buckets
        self.pair_counts = None
        self._pairs = {}
        self.alignment_tracker = tf.keras.metrics.Mean(name="alignment_loss")

    # No tensor-dependent Python control flow in these steps: without autograph the first trace
    # takes seconds instead of a minute or more on this machine.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, inputs):
        return super().train_step(inputs)

    @tf.autograph.experimental.do_not_convert
    def test_step(self, inputs):
        return super().test_step(inputs)

    def prepare_training_data(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Computes the alignment pairs from the training split's columns and attaches them."""
        if self.hparams.edda_alignment_weight > 0:
            self.set_alignment_pairs(pairs_from_training_arrays(arrays, self.hparams, self._vocab_sizes,
                                                                self._num_oov_buckets))

    def set_alignment_pairs(self, pairs: Mapping[str, AlignmentPairs]) -> None:
        self._pairs = {kind: tuple(tf.constant(np.asarray(getattr(p, f)), tf.int32)
                                   for f in ("id_a", "domain_a", "id_b", "domain_b"))
                       for kind, p in pairs.items() if len(p)}
        self.pair_counts = {kind: len(p) for kind, p in pairs.items()}
        log.info("EDDA alignment pairs: %s", self.pair_counts)

    def regularised_tables(self):
        return super().regularised_tables() + list(self.network.intra_tables.values())

    def auxiliary_loss(self, features, labels, outputs, domain) -> tf.Tensor:
        weight = self.hparams.edda_alignment_weight
        if weight <= 0 or not self._pairs:
            return tf.constant(0.0)
        total = tf.constant(0.0)
        for kind, (id_a, dom_a, id_b, dom_b) in self._pairs.items():
            n = int(id_a.shape[0])
            if n > self.hparams.edda_alignment_batch:
                pick = tf.random.uniform([self.hparams.edda_alignment_batch], 0, n, dtype=tf.int32)
                id_a, dom_a, id_b, dom_b = (tf.gather(t, pick) for t in (id_a, dom_a, id_b, dom_b))
            total += alignment_loss(self.network.mapped_intra(kind, id_a, dom_a),
                                    self.network.mapped_intra(kind, id_b, dom_b))
        self.alignment_tracker.update_state(total)
        return weight * total


def build_edda_model(network: EDDANetwork, hparams, feature_config: FeatureConfig, vocab_sizes, name: str):
    return EDDAModel(network, hparams, feature_config.num_domains, vocab_sizes, feature_config.num_oov_buckets,
                     name=name)
