"""Gates that mix expert outputs.

Expert-level gate (MMoE): one softmax weight per expert, w (N, G, M).
Element-wise gate (Crocodile's EG, DESIGN 5.4): logits reshaped to (M, d) with a softmax
over the M experts separately for every output dimension (I: the paper says "across the
second dimension"; softmax over experts per dimension is our reading), so each output
dimension is a convex combination of the experts' same dimension.
G gates (one per domain) are evaluated together; the gate input is either shared (N, in)
or per gate (N, G, in) (ME-MMoE gates read their own domain's embedding set).
"""
import tensorflow as tf

from crocodile.model.blocks import GroupedDense


def mix_expert_level(weights: tf.Tensor, expert_outputs: tf.Tensor) -> tf.Tensor:
    """weights (N, G, M), expert_outputs (N, M, d) -> (N, G, d)."""
    return tf.einsum("ngm,nmd->ngd", weights, expert_outputs)


def mix_element_wise(weights: tf.Tensor, expert_outputs: tf.Tensor) -> tf.Tensor:
    """weights (N, G, M, d), expert_outputs (N, M, d) -> (N, G, d) = sum_m w[m,:] * O_m."""
    return tf.reduce_sum(weights * expert_outputs[:, tf.newaxis], axis=2)


class ExpertGate(tf.keras.layers.Layer):
    """G linear gates with a softmax over M experts. call(x) -> weights (N, G, M)."""

    def __init__(self, num_gates: int, num_experts: int, **kwargs):
        super().__init__(**kwargs)
        self.logits = GroupedDense(num_gates, num_experts, name="gate_logits")

    def call(self, x):
        return tf.nn.softmax(self.logits(x), axis=-1)


def own_group_dense(layer: GroupedDense, x: tf.Tensor, group: tf.Tensor) -> tf.Tensor:
    """Row i of x (N, in) through weight set group[i] of a GroupedDense: (N, units).
    One matmul per group on its own rows (dynamic partition / stitch), G times cheaper
    than evaluating every group for every row and selecting."""
    if not layer.built:
        layer.build(x.shape)
    num_groups = layer.groups
    rows = tf.dynamic_partition(tf.range(tf.shape(x)[0]), group, num_groups)
    parts = tf.dynamic_partition(x, group, num_groups)
    outputs = [tf.matmul(parts[g], layer.kernel[g]) + layer.bias[g] for g in range(num_groups)]
    return layer.activation(tf.dynamic_stitch(rows, outputs))


class ElementwiseGate(tf.keras.layers.Layer):
    """G linear gates r W_s + b_s reshaped to (M, d), softmax over M for each dimension.
    call(x) -> weights (N, G, M, d); they sum to 1 over M for every (row, gate, dimension).
    call(x, gate_of_row) -> (N, M, d): only each row's own gate (what a domain tower uses)."""

    def __init__(self, num_gates: int, num_experts: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_gates, self.num_experts, self.dim = num_gates, num_experts, dim
        self.logits = GroupedDense(num_gates, num_experts * dim, name="gate_logits")

    def call(self, x, gate_of_row=None):
        if gate_of_row is not None:
            logits = tf.reshape(own_group_dense(self.logits, x, gate_of_row), [-1, self.num_experts, self.dim])
            return tf.nn.softmax(logits, axis=1)
        logits = tf.reshape(self.logits(x), [-1, self.num_gates, self.num_experts, self.dim])
        return tf.nn.softmax(logits, axis=2)
