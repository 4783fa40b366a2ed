"""Domain-personalised baselines: PEPNet, HiNet, AdaSparse and MLoRA (STAR: star.py)."""
import tensorflow as tf

from crocodile.model.blocks import DomainTowers, GroupedDense, GroupedMLP, select_domain
from crocodile.model.features import ITEM_KEY, USER_KEY
from crocodile.model.gates import ExpertGate, mix_expert_level
from crocodile.model.inputs import DomainEmbedding
from crocodile.model.network_base import DomainNetwork, single_set_input

_VARIABLE_STATE = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.MEAN)


class GateNU(tf.keras.layers.Layer):
    """PEPNet's Gate Neural Unit: gamma * sigmoid(W2 relu(W1 x)), values in (0, gamma)."""

    def __init__(self, units: int, hidden: int, gamma: float, **kwargs):
        super().__init__(**kwargs)
        self.hidden = tf.keras.layers.Dense(hidden, activation="relu", name="hidden")
        self.out = tf.keras.layers.Dense(units, activation="sigmoid", name="scale")
        self.gamma = gamma

    def call(self, x):
        return self.gamma * self.out(self.hidden(x))


class PEPNetNetwork(DomainNetwork):
    """PEPNet (Chang et al. 2023). EPNet scales the embedding element-wise by a Gate NU of
    [domain embedding, stop_gradient(embedding)]; PPNet scales every hidden layer by a
    Gate NU of the persona prior [user id, item id, domain embedding, stop_gradient(EPNet
    output)]. As in the public implementations, the gates do not back-propagate into the
    main embedding. One output logit: the domain enters through the gates."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        h = hparams
        fields = list(feature_config.categorical)
        self.user_slice = fields.index(USER_KEY)
        self.item_slice = fields.index(ITEM_KEY)
        self.domain_embedding = DomainEmbedding(self.num_domains, h.embedding_dim, h.embedding_init_stddev,
                                                name="domain_embedding")
        width = len(fields) * h.embedding_dim
        self.epnet = GateNU(width, h.pepnet_gate_units, h.pepnet_gamma, name="epnet")
        units = list(h.expert_units) + list(h.tower_units)
        self.layers_ = [tf.keras.layers.Dense(u, activation="relu", name=f"dense_{i}") for i, u in enumerate(units)]
        self.ppnet = [GateNU(u, h.pepnet_gate_units, h.pepnet_gamma, name=f"ppnet_{i}") for i, u in enumerate(units)]
        self.logit_layer = tf.keras.layers.Dense(1, name="logit")

    def forward(self, inputs, features, training):
        e = self.hparams.embedding_dim
        emb = inputs["embeddings"][:, 0, :]
        domain_vec = self.domain_embedding(inputs["domain"])
        personalised = emb * self.epnet(tf.concat([domain_vec, tf.stop_gradient(emb)], axis=1))
        user = emb[:, self.user_slice * e:(self.user_slice + 1) * e]
        item = emb[:, self.item_slice * e:(self.item_slice + 1) * e]
        persona = tf.concat([user, item, domain_vec, tf.stop_gradient(personalised)], axis=1)
        h = tf.concat([personalised, inputs["dense"]], axis=1)
        for layer, gate in zip(self.layers_, self.ppnet):
            h = layer(h) * gate(persona)
        return self.logit_layer(h)[:, 0], None


class HiNetNetwork(DomainNetwork):
    """HiNet (Zhou et al. 2023), scenario extraction layer for one task: shared experts
    mixed by a per-domain gate, domain-specific experts, and the scenario-aware attentive
    network (SAN) that weights the OTHER domains' specific representations by attention
    on the domain embedding; [shared, own specific, SAN] feed the domain's tower."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        s, h = self.num_domains, hparams
        self.n_sp = h.num_specific_experts
        self.shared = GroupedMLP(h.num_shared_experts, h.expert_units, "relu", name="shared_experts")
        self.shared_gate = ExpertGate(s, h.num_shared_experts, name="shared_gates")
        self.specific = GroupedMLP(s * self.n_sp, h.expert_units, "relu", name="specific_experts")
        self.specific_gate = ExpertGate(s, self.n_sp, name="specific_gates")
        self.domain_embedding = DomainEmbedding(s, h.embedding_dim, h.embedding_init_stddev, name="domain_embedding")
        self.san = tf.keras.layers.Dense(s, name="san_attention")
        self.towers = DomainTowers(s, h.tower_units, name="domain_towers")

    def forward(self, inputs, features, training):
        s, domain = self.num_domains, inputs["domain"]
        x = single_set_input(inputs)
        shared_out = self.shared(x)                                                     # (N, n_sh, d)
        shared_rep = mix_expert_level(self.shared_gate(x), shared_out)                  # (N, S, d)
        spec_out = self.specific(x)                                                     # (N, S*n_sp, d)
        d = spec_out.shape[-1]
        per_domain = tf.reshape(spec_out, [-1, s, self.n_sp, d])
        specific_rep = tf.einsum("nse,nsed->nsd", self.specific_gate(x), per_domain)   # (N, S, d)
        scores = self.san(self.domain_embedding(domain))                                # (N, S)
        scores = tf.where(tf.one_hot(domain, s) > 0, -1e9, scores)                      # other domains only
        attended = tf.einsum("ns,nsd->nd", tf.nn.softmax(scores, axis=1), specific_rep)
        rep = tf.concat([select_domain(shared_rep, domain), select_domain(specific_rep, domain), attended], axis=1)
        return self.towers(rep, domain), tf.concat([shared_out, spec_out], axis=1)


class FusionPruner(tf.keras.layers.Layer):
    """AdaSparse's fusion pruner: s = beta * sigmoid(alpha * v), pi = s where s >= epsilon,
    else exactly 0 (the public port multiplies by sign(s - eps), giving -s instead).
    alpha grows by `alpha_step` per training step up to `alpha_max`; never in inference."""

    def __init__(self, units: int, hparams, **kwargs):
        super().__init__(**kwargs)
        self.dense = tf.keras.layers.Dense(units, name="weights")
        self.h = hparams

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(), initializer=tf.keras.initializers.Constant(
            self.h.adasparse_alpha_init), **_VARIABLE_STATE)
        super().build(input_shape)

    def call(self, x, training=None):
        scale = self.h.adasparse_beta * tf.sigmoid(self.alpha * self.dense(x))
        if training:
            self.alpha.assign(tf.minimum(self.alpha + self.h.adasparse_alpha_step, self.h.adasparse_alpha_max))
        return scale * tf.cast(scale >= self.h.adasparse_epsilon, scale.dtype)


class AdaSparseNetwork(DomainNetwork):
    """AdaSparse (Yang et al. 2022): one shared MLP whose neurons are pruned per sample by
    domain-aware pruners reading [domain embedding, stop_gradient(layer input)] (I)."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        units = list(hparams.expert_units) + list(hparams.tower_units)
        self.domain_embedding = DomainEmbedding(self.num_domains, hparams.embedding_dim,
                                                hparams.embedding_init_stddev, name="domain_embedding")
        self.layers_ = [tf.keras.layers.Dense(u, activation="relu", name=f"dense_{i}") for i, u in enumerate(units)]
        self.pruners = [FusionPruner(u, hparams, name=f"pruner_{i}") for i, u in enumerate(units)]
        self.logit_layer = tf.keras.layers.Dense(1, name="logit")

    def forward(self, inputs, features, training):
        domain_vec = self.domain_embedding(inputs["domain"])
        h = single_set_input(inputs)
        for layer, pruner in zip(self.layers_, self.pruners):
            pi = pruner(tf.concat([domain_vec, tf.stop_gradient(h)], axis=1), training=training)
            h = layer(h) * pi
        return self.logit_layer(h)[:, 0], None


class LoRADense(tf.keras.layers.Layer):
    """Dense layer plus a rank-r adapter per domain: y = xW + b + (x A_s) B_s.
    B starts at zero (LoRA), so training starts from the shared layer."""

    def __init__(self, num_domains: int, units: int, rank: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.dense = tf.keras.layers.Dense(units, name="shared")
        self.down = GroupedDense(num_domains, rank, name="lora_a")
        self.num_domains, self.units, self.rank = num_domains, units, rank
        self.activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        self.up = self.add_weight(name="lora_b", shape=(self.num_domains, self.rank, self.units), initializer="zeros")
        super().build(input_shape)

    def call(self, x, domain):
        low = select_domain(self.down(x), domain)                                       # (N, r)
        adapted = tf.einsum("nr,nro->no", low, tf.gather(self.up, domain))
        return self.activation(self.dense(x) + adapted)


class MLoRANetwork(DomainNetwork):
    """MLoRA (Yang et al. 2024): a shared MLP with a low-rank domain adapter on every layer,
    the output layer included."""

    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        s, r = self.num_domains, hparams.lora_rank
        units = list(hparams.expert_units) + list(hparams.tower_units)
        self.layers_ = [LoRADense(s, u, r, activation="relu", name=f"lora_{i}") for i, u in enumerate(units)]
        self.logit_layer = LoRADense(s, 1, r, name="lora_logit")

    def forward(self, inputs, features, training):
        h = single_set_input(inputs)
        for layer in self.layers_:
            h = layer(h, inputs["domain"])
        return self.logit_layer(h, inputs["domain"])[:, 0], None
