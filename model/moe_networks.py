"""Expert-based baselines: single-domain, SharedBottom, MMoE, ME-MMoE, PLE, ME-PLE, STEM.

Multi-domain learning is treated as multi-task learning with one task per domain, as
the Crocodile paper does: each domain has its own gate and tower, and a row's prediction
is its own domain's tower output.
"""
import tensorflow as tf

from crocodile.model.blocks import DomainTowers, GroupedMLP, mlp, select_domain
from crocodile.model.gates import ExpertGate, mix_expert_level
from crocodile.model.network_base import DomainNetwork, single_set_input, with_dense


class SingleDomainNetwork(DomainNetwork):
    """One separate model per domain: a domain's own embedding set and its own MLP.
    Each row touches only its domain's parameters, so every domain is trained on its own
    data alone, as S separately trained models would be (in one graph, for speed)."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams,
                         num_embedding_sets=feature_config.num_domains, **kwargs)
        self.towers = DomainTowers(self.num_domains, list(hparams.expert_units) + list(hparams.tower_units),
                                   name="domain_mlps")

    def forward(self, inputs, features, training):
        own = select_domain(inputs["embeddings"], inputs["domain"])
        x = tf.concat([own, inputs["dense"]], axis=1)
        return self.towers(x, inputs["domain"]), None


class SharedBottomNetwork(DomainNetwork):
    """A shared bottom MLP and one tower per domain (Caruana 1997)."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        self.bottom = mlp(hparams.expert_units, name="bottom")
        self.towers = DomainTowers(self.num_domains, hparams.tower_units, name="domain_towers")

    def forward(self, inputs, features, training):
        return self.towers(self.bottom(single_set_input(inputs)), inputs["domain"]), None


class MMoENetwork(DomainNetwork):
    """MMoE (Ma et al. 2018): shared experts, one softmax gate and tower per domain.
    ME-MMoE (`multi_embedding=True`): expert m reads embedding set m, and domain s's gate
    reads set s mod M (the paper ties M to the number of domains)."""

    def __init__(self, feature_config, vocab_sizes, hparams, multi_embedding=False, **kwargs):
        sets = hparams.num_embedding_sets if multi_embedding else 1
        super().__init__(feature_config, vocab_sizes, hparams, num_embedding_sets=sets, **kwargs)
        self.multi_embedding = multi_embedding
        num_experts = sets if multi_embedding else hparams.num_experts
        self.experts = GroupedMLP(num_experts, hparams.expert_units, final_activation="relu", name="experts")
        self.gates = ExpertGate(self.num_domains, num_experts, name="gates")
        self.towers = DomainTowers(self.num_domains, hparams.tower_units, name="domain_towers")

    def forward(self, inputs, features, training):
        if self.multi_embedding:
            per_set = with_dense(inputs["embeddings"], inputs["dense"])                 # (N, M, K)
            expert_outputs = self.experts(per_set)
            set_of_domain = [s % self.num_embedding_sets for s in range(self.num_domains)]
            weights = self.gates(tf.gather(per_set, set_of_domain, axis=1))            # (N, S, M)
        else:
            x = single_set_input(inputs)
            expert_outputs = self.experts(x)
            weights = self.gates(x)
        mixed = mix_expert_level(weights, expert_outputs)                               # (N, S, d)
        return self.towers(mixed, inputs["domain"]), expert_outputs


class ProgressiveNetwork(DomainNetwork):
    """PLE (Tang et al. 2020) and its multi-embedding relatives.

    - PLE: every expert reads the one embedding; `ple_levels` CGC levels.
    - ME-PLE: S + 1 embedding sets; domain s's specific experts and gate read set s, the
      shared experts read the last set; domain s's gate mixes its own and the shared experts.
    - STEM (Su et al. 2024): as ME-PLE, but domain s's gate reads set s + the shared set and
      mixes ALL experts, with the other domains' specific experts stop-gradiented
      ("all forward, task-specific backward").
    """

    def __init__(self, feature_config, vocab_sizes, hparams, variant="ple", **kwargs):
        if variant not in ("ple", "me_ple", "stem"):
            raise ValueError(f"unknown PLE variant {variant!r}")
        sets = 1 if variant == "ple" else feature_config.num_domains + 1
        super().__init__(feature_config, vocab_sizes, hparams, num_embedding_sets=sets, **kwargs)
        self.variant = variant
        s, n_sp, n_sh = self.num_domains, hparams.num_specific_experts, hparams.num_shared_experts
        self.n_sp, self.n_sh = n_sp, n_sh
        levels = hparams.ple_levels if variant == "ple" else 1
        self.specific, self.shared, self.domain_gates, self.shared_gates = [], [], [], []
        gate_width = s * n_sp + n_sh if variant == "stem" else n_sp + n_sh
        for level in range(levels):
            self.specific.append(GroupedMLP(s * n_sp, hparams.expert_units, "relu", name=f"specific_{level}"))
            self.shared.append(GroupedMLP(n_sh, hparams.expert_units, "relu", name=f"shared_{level}"))
            self.domain_gates.append(ExpertGate(s, gate_width, name=f"domain_gates_{level}"))
            # The shared gate feeds the next level only; the last level has none.
            self.shared_gates.append(
                ExpertGate(1, s * n_sp + n_sh, name=f"shared_gate_{level}") if level < levels - 1 else None)
        self.towers = DomainTowers(s, hparams.tower_units, name="domain_towers")

    def _level_inputs(self, inputs):
        """(N, S, K) specific inputs and (N, K) shared input of the first level."""
        if self.variant == "ple":
            x = single_set_input(inputs)
            return tf.tile(x[:, tf.newaxis], [1, self.num_domains, 1]), x
        per_set = with_dense(inputs["embeddings"], inputs["dense"])
        return per_set[:, :self.num_domains], per_set[:, self.num_domains]

    def forward(self, inputs, features, training):
        s, n_sp = self.num_domains, self.n_sp
        specific_in, shared_in = self._level_inputs(inputs)
        for level in range(len(self.specific)):
            spec_out = self.specific[level](tf.repeat(specific_in, n_sp, axis=1))         # (N, S*n_sp, d)
            shared_out = self.shared[level](shared_in)                                    # (N, n_sh, d)
            d = spec_out.shape[-1]
            if self.variant == "stem":
                gate_in = specific_in + shared_in[:, tf.newaxis]
                all_out = tf.concat([spec_out, shared_out], axis=1)
                weights = self.domain_gates[level](gate_in)                              # (N, S, S*n_sp+n_sh)
                own = tf.concat([tf.repeat(tf.eye(s), n_sp, axis=1), tf.ones([s, self.n_sh])], axis=1)
                mixed = (mix_expert_level(weights * own, all_out)
                         + mix_expert_level(weights * (1.0 - own), tf.stop_gradient(all_out)))
            else:
                weights = self.domain_gates[level](specific_in)                          # (N, S, n_sp+n_sh)
                own_spec = tf.reshape(spec_out, [-1, s, n_sp, d])
                shared_b = tf.tile(shared_out[:, tf.newaxis], [1, s, 1, 1])
                candidates = tf.concat([own_spec, shared_b], axis=2)                     # (N, S, n_sp+n_sh, d)
                mixed = tf.einsum("nse,nsed->nsd", weights, candidates)
            if self.shared_gates[level] is not None:
                all_out = tf.concat([spec_out, shared_out], axis=1)
                shared_in = mix_expert_level(self.shared_gates[level](shared_in), all_out)[:, 0]
            specific_in = mixed
        expert_outputs = tf.concat([spec_out, shared_out], axis=1)
        return self.towers(specific_in, inputs["domain"]), expert_outputs
