"""Crocodile's inference network (DESIGN 5.1-5.5) with the Table 5 / Table 6 switches.

- embedding "me": M embedding sets, one table of width M*e per field, expert m reads set m
  (P); "se": one set read by all M experts (ablation).
- experts: M MLPs ending in ReLU, so outputs are non-negative (P); one expert per set (I).
- gate "peg": prior-informed element-wise gate (P): r = [user id, item id, domain id]
  prior embeddings from separate tables, logits r W_s + b_s per domain s reshaped to
  (M, d), softmax over the M experts per dimension (I); "pg": prior-informed expert-level;
  "eg" / "g": element-wise / expert-level gates reading the sample's own embeddings
  (the mean over the embedding sets plus numeric features, (I)).
- towers: one per domain; a row's prediction is its own domain's tower (P).
The covariance loss is not here: it lives on the outer model, in training only.
"""
import tensorflow as tf

from crocodile.model.blocks import DomainTowers, GroupedMLP
from crocodile.model.gates import ElementwiseGate, ExpertGate, mix_expert_level
from crocodile.model.inputs import PriorEmbeddings
from crocodile.model.network_base import DomainNetwork, with_dense

EMBEDDINGS = ("me", "se")
GATES = ("peg", "pg", "eg", "g")


class CrocodileNetwork(DomainNetwork):
    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        if hparams.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {hparams.embedding!r}")
        if hparams.gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {hparams.gate!r}")
        self.num_experts = hparams.num_embedding_sets
        sets = self.num_experts if hparams.embedding == "me" else 1
        super().__init__(feature_config, vocab_sizes, hparams, num_embedding_sets=sets, **kwargs)
        s, m = self.num_domains, self.num_experts
        self.expert_dim = hparams.expert_units[-1]
        self.experts = GroupedMLP(m, hparams.expert_units, final_activation="relu", name="experts")
        self.prior = (PriorEmbeddings(feature_config, vocab_sizes, hparams.prior_embedding_dim,
                                      hparams.embedding_init_stddev, name="prior_embeddings")
                      if hparams.gate in ("peg", "pg") else None)
        self.element_wise = hparams.gate in ("peg", "eg")
        self.gates = (ElementwiseGate(s, m, self.expert_dim, name="gates") if self.element_wise
                      else ExpertGate(s, m, name="gates"))
        self.towers = DomainTowers(s, hparams.tower_units, name="domain_towers")

    def gate_input(self, inputs, features):
        if self.prior is not None:
            return self.prior(features)
        return tf.concat([tf.reduce_mean(inputs["embeddings"], axis=1), inputs["dense"]], axis=1)

    def forward(self, inputs, features, training):
        per_set = with_dense(inputs["embeddings"], inputs["dense"])                # (N, sets, K)
        if self.num_embedding_sets == 1:
            per_set = tf.tile(per_set, [1, self.num_experts, 1])                 # SE: all experts share it
        expert_outputs = self.experts(per_set)                                    # (N, M, d), >= 0
        gate_input = self.gate_input(inputs, features)
        if self.element_wise:
            # Only the row's own domain's gate: the same function, S times less work.
            weights = self.gates(gate_input, inputs["domain"])                    # (N, M, d)
            mixed = tf.reduce_sum(weights * expert_outputs, axis=1)               # (N, d)
        else:
            mixed = mix_expert_level(self.gates(gate_input), expert_outputs)      # (N, S, d)
        return self.towers(mixed, inputs["domain"]), expert_outputs

    @property
    def prior_tables(self):
        return {} if self.prior is None else {f"prior_{k}": self.prior.tables.table_for(k) for k in self.prior.fields}
