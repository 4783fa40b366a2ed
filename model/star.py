"""STAR (Sheng et al. 2021): partitioned normalisation, star-topology FCN, auxiliary net.

Follows the paper, not the public PyTorch port (DESIGN / model_anchors section 7): the
normalisation keeps per-domain moving statistics and uses them at inference, so a row's
prediction does not depend on the rest of its batch; the last FCN layer has no ReLU.
"""
import tensorflow as tf

from crocodile.model.blocks import mlp, select_domain
from crocodile.model.inputs import DomainEmbedding
from crocodile.model.network_base import DomainNetwork, single_set_input

_BN_EPS = 1e-3


class PartitionedNormalization(tf.keras.layers.Layer):
    """Batch normalisation with statistics per domain: x_hat = (x - E_s) / sqrt(Var_s + eps),
    output (gamma * gamma_s) * x_hat + (beta + beta_s). Training uses the domain's batch
    moments (the moving ones for a domain with fewer than 2 rows in the batch) and updates
    that domain's moving statistics; inference uses the moving statistics."""

    def __init__(self, num_domains: int, momentum: float, **kwargs):
        super().__init__(**kwargs)
        self.num_domains, self.momentum = num_domains, momentum

    def build(self, input_shape):
        s, dim = self.num_domains, int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        self.domain_gamma = self.add_weight(name="domain_gamma", shape=(s, dim), initializer="ones")
        self.domain_beta = self.add_weight(name="domain_beta", shape=(s, dim), initializer="zeros")
        # Like Keras BatchNormalization's moving statistics (ON_READ / MEAN under tf.distribute).
        stat = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.MEAN)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(s, dim), initializer="zeros", **stat)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(s, dim), initializer="ones", **stat)
        super().build(input_shape)

    def call(self, x, domain, training=None):
        if training:
            counts = tf.math.unsorted_segment_sum(tf.ones_like(domain, tf.float32), domain, self.num_domains)
            mean = tf.math.unsorted_segment_mean(x, domain, self.num_domains)
            mean_sq = tf.math.unsorted_segment_mean(tf.square(x), domain, self.num_domains)
            variance = tf.maximum(mean_sq - tf.square(mean), 0.0)
            present = (counts >= 2.0)[:, tf.newaxis]
            mean = tf.where(present, mean, self.moving_mean)
            variance = tf.where(present, variance, self.moving_variance)
            rate = tf.where(present, 1.0 - self.momentum, 0.0)
            self.moving_mean.assign(self.moving_mean + rate * (tf.stop_gradient(mean) - self.moving_mean))
            self.moving_variance.assign(
                self.moving_variance + rate * (tf.stop_gradient(variance) - self.moving_variance))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        x_hat = (x - tf.gather(mean, domain)) * tf.math.rsqrt(tf.gather(variance, domain) + _BN_EPS)
        scale = self.gamma * tf.gather(self.domain_gamma, domain)
        shift = self.beta + tf.gather(self.domain_beta, domain)
        return scale * x_hat + shift


class StarDense(tf.keras.layers.Layer):
    """Star-topology layer: W_s (x) W element-wise, b_s + b; every domain's weights are
    evaluated and each row keeps its own (S is small)."""

    def __init__(self, num_domains: int, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.num_domains, self.units = num_domains, units
        self.activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(fan_in, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        # (I) domain factors start at 1 and 0, so training starts from the shared FCN.
        self.domain_kernel = self.add_weight(name="domain_kernel", shape=(self.num_domains, fan_in, self.units),
                                             initializer="ones")
        self.domain_bias = self.add_weight(name="domain_bias", shape=(self.num_domains, self.units),
                                           initializer="zeros")
        super().build(input_shape)

    def call(self, x, domain):
        per_domain = tf.einsum("ni,sio->nso", x, self.kernel[tf.newaxis] * self.domain_kernel)
        y = select_domain(per_domain, domain) + self.bias + tf.gather(self.domain_bias, domain)
        return self.activation(y)


class StarNetwork(DomainNetwork):
    def __init__(self, feature_config, vocab_sizes, hparams, **kwargs):
        super().__init__(feature_config, vocab_sizes, hparams, **kwargs)
        s = self.num_domains
        self.normalization = PartitionedNormalization(s, hparams.star_momentum, name="partitioned_norm")
        units = list(hparams.expert_units) + list(hparams.tower_units)
        self.fcn = [StarDense(s, u, activation="relu", name=f"star_{i}") for i, u in enumerate(units)]
        self.fcn.append(StarDense(s, 1, activation=None, name="star_logit"))   # no ReLU on the logit
        self.domain_embedding = DomainEmbedding(s, hparams.embedding_dim, hparams.embedding_init_stddev,
                                                name="aux_domain")
        self.auxiliary = mlp(list(hparams.star_aux_units) + [1], final_activation=None, name="auxiliary")

    def forward(self, inputs, features, training):
        domain = inputs["domain"]
        x = single_set_input(inputs)
        h = self.normalization(x, domain, training=training)
        for layer in self.fcn:
            h = layer(h, domain)
        aux = self.auxiliary(tf.concat([self.domain_embedding(domain), x], axis=1))
        return h[:, 0] + aux[:, 0], None
