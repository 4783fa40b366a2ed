"""Dense building blocks: plain MLPs, grouped MLPs (experts, per-domain towers), row selection.

A *grouped* layer holds G independent weight sets with kernels of shape (G, in, out) and
evaluates all of them in one einsum. Experts are a grouped MLP over their own inputs
(N, G, in); per-domain towers are a grouped MLP over all S domains, after which each row
keeps its own domain's output (DESIGN 5.5: compute all S towers, pick the sample's own).
"""
from typing import Sequence

import tensorflow as tf


def select_domain(per_domain: tf.Tensor, domain: tf.Tensor) -> tf.Tensor:
    """Row i of (N, S, ...) -> entry domain[i]: (N, ...)."""
    return tf.gather(per_domain, domain, batch_dims=1)


class GroupedDense(tf.keras.layers.Layer):
    """G independent Dense layers. Input (N, G, in), or (N, in) shared by all groups;
    output (N, G, units)."""

    def __init__(self, groups: int, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.units = groups, units
        self.activation = tf.keras.activations.get(activation)

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        limit = (6.0 / (fan_in + self.units)) ** 0.5
        self.kernel = self.add_weight(
            name="kernel", shape=(self.groups, fan_in, self.units),
            initializer=tf.keras.initializers.RandomUniform(-limit, limit))
        self.bias = self.add_weight(name="bias", shape=(self.groups, self.units), initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        if x.shape.rank == 2:
            y = tf.einsum("ni,gio->ngo", x, self.kernel)
        else:
            y = tf.einsum("ngi,gio->ngo", x, self.kernel)
        return self.activation(y + self.bias)


class GroupedMLP(tf.keras.layers.Layer):
    """G independent MLPs. `final_activation` applies after the last layer (Crocodile's
    experts end in ReLU so their outputs are non-negative, DESIGN 5.2)."""

    def __init__(self, groups: int, units: Sequence[int], final_activation=None, **kwargs):
        super().__init__(**kwargs)
        units = list(units)
        self.layers_ = [
            GroupedDense(groups, u, activation=("relu" if i < len(units) - 1 else final_activation),
                         name=f"dense_{i}")
            for i, u in enumerate(units)
        ]

    def call(self, x):
        for layer in self.layers_:
            x = layer(x)
        return x


def mlp(units: Sequence[int], final_activation="relu", name=None) -> tf.keras.Sequential:
    """A plain MLP with ReLU between layers."""
    units = list(units)
    return tf.keras.Sequential(
        [tf.keras.layers.Dense(u, activation=("relu" if i < len(units) - 1 else final_activation),
                               name=f"dense_{i}") for i, u in enumerate(units)],
        name=name)


class DomainTowers(tf.keras.layers.Layer):
    """One MLP tower per domain ending in one logit. Input (N, in) shared by every tower or
    (N, S, in) one input per domain; output: each row's own domain's logit, (N,)."""

    def __init__(self, num_domains: int, units: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.towers = GroupedMLP(num_domains, list(units) + [1], final_activation=None, name="towers")

    def call(self, x, domain):
        logits = self.towers(x)[..., 0]          # (N, S)
        return select_domain(logits, domain)
