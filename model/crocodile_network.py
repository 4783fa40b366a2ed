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
The covariance loss is not here: it lives on the outer model, in training only. In training
the network also returns the experts' last-layer pre-activations (the ReLU's input), which
a departure of the loss reads; the inference outputs are the same either way.
"""
import tensorflow as tf

from crocodile.model.blocks import DomainTowers, GroupedMLP, select_domain
from crocodile.model.gates import ElementwiseGate, ExpertGate, mix_expert_level
from crocodile.model.hparams import EXPERT_OUTPUTS, EXPERT_PRE_ACTIVATIONS
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
        # The final ReLU is applied in forward(), so training can also read its input.
        self.experts = GroupedMLP(m, hparams.expert_units, final_activation=None, name="experts")
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

    def mixing_weights(self, inputs, features):
        """Each row's own domain's gate weights: (N, M, d) element-wise, (N, M) expert-level."""
        gate_input = self.gate_input(inputs, features)
        if self.element_wise:
            # Only the row's own domain's gate: the same function, S times less work.
            return self.gates(gate_input, inputs["domain"])
        return select_domain(self.gates(gate_input), inputs["domain"])

    def forward(self, inputs, features, training):
        per_set = with_dense(inputs["embeddings"], inputs["dense"])                # (N, sets, K)
        if self.num_embedding_sets == 1:
            per_set = tf.tile(per_set, [1, self.num_experts, 1])                 # SE: all experts share it
        pre_activations = self.experts(per_set)                                   # (N, M, d)
        expert_outputs = tf.nn.relu(pre_activations)                              # >= 0 (P)
        weights = self.mixing_weights(inputs, features)
        if self.element_wise:
            mixed = tf.reduce_sum(weights * expert_outputs, axis=1)               # (N, d)
        else:
            mixed = mix_expert_level(weights[:, tf.newaxis], expert_outputs)[:, 0]
        extras = {EXPERT_OUTPUTS: expert_outputs}
        if training:
            extras[EXPERT_PRE_ACTIVATIONS] = pre_activations
        return self.towers(mixed, inputs["domain"]), extras

    @property
    def domain_gate_kernel(self) -> tf.Variable:
        """(S, in, out) kernel of the per-domain gates (for gate shrinkage)."""
        return self.gates.logits.kernel

    @property
    def prior_tables(self):
        """The prior embedding tables (user, item, domain): they fall under the embedding L2."""
        if self.prior is None:
            return {}
        tables = {f"prior_{k}": self.prior.tables.table_for(k) for k in self.prior.fields}
        if self.prior.domain_table is not None:
            tables["prior_domain_id"] = self.prior.domain_table.table
        return tables
