"""Training losses: per-domain BCE, Crocodile's cross-expert covariance loss, and the
disentangling alternatives of the paper's Table 4.

Every disentangling loss takes expert outputs of shape (n, M, d) (rows, experts, dims),
computes in float32 and does no sampling: the caller samples the rows
(`sample_rows`, 32 per step as in the paper).
"""
from typing import Callable, Dict

import tensorflow as tf

_EPS = 1e-8


def _check_rows(outputs: tf.Tensor) -> tf.Tensor:
    outputs = tf.convert_to_tensor(outputs)
    if outputs.shape.rank != 3:
        raise ValueError(f"expert outputs must have shape (n, M, d), got {outputs.shape}")
    if outputs.shape[0] is not None and outputs.shape[0] < 2:
        raise ValueError(f"a covariance needs n >= 2 rows, got {outputs.shape[0]}")
    return tf.cast(outputs, tf.float32)


def _off_diagonal_block_mask(num_experts: int, dim: int) -> tf.Tensor:
    """(M*d, M*d) float mask: 1 outside the M diagonal d x d blocks."""
    block = tf.repeat(tf.range(num_experts), dim)
    return tf.cast(tf.not_equal(block[:, None], block[None, :]), tf.float32)


def cross_expert_covariance_loss(expert_outputs: tf.Tensor) -> tf.Tensor:
    """DESIGN 5.3: (1/d^2) * sum_{p<q} sum_ij |C_pq[i, j]| with C_pq = Oc_p^T Oc_q / (n - 1).

    Oc are the outputs centred over the n rows (gradients flow through the mean). One Gram
    matrix G = Z^T Z / (n - 1) of Z = Oc reshaped (n, M*d) holds every C_pq; the loss is the
    absolute sum of G outside its M diagonal blocks, halved (each pair appears twice).
    Sums of absolute values, not tf.norm, whose gradient at 0 is NaN (dead experts).
    n < 2 raises when the row count is static; at run time a batch of one row gives 0.
    """
    outputs = _check_rows(expert_outputs)
    shape = tf.shape(outputs)
    n, num_experts, dim = shape[0], outputs.shape[1], outputs.shape[2]
    centred = outputs - tf.reduce_mean(outputs, axis=0, keepdims=True)
    z = tf.reshape(centred, [n, num_experts * dim])
    denominator = tf.maximum(tf.cast(n, tf.float32) - 1.0, 1.0)
    gram = tf.matmul(z, z, transpose_a=True) / denominator
    off_blocks = tf.reduce_sum(tf.abs(gram) * _off_diagonal_block_mask(num_experts, dim))
    loss = off_blocks / 2.0 / float(dim * dim)
    return tf.where(n >= 2, loss, 0.0)


def _pair_indices(num_experts: int):
    return [(p, q) for p in range(num_experts) for q in range(p + 1, num_experts)]


def dot_product_loss(expert_outputs: tf.Tensor) -> tf.Tensor:
    """Table 4 "Dot" (I: exact form not given): sum over pairs p<q of the row-mean
    |<o_p, o_q>| / d, pushing experts' outputs of the same sample towards orthogonal."""
    outputs = _check_rows(expert_outputs)
    dim = float(outputs.shape[2])
    dots = tf.einsum("npd,nqd->npq", outputs, outputs)                  # (n, M, M)
    upper = tf.linalg.band_part(tf.ones_like(dots[0]), 0, -1) - tf.eye(tf.shape(dots)[1])
    return tf.reduce_sum(tf.reduce_mean(tf.abs(dots), axis=0) * upper) / dim


def cosine_similarity_loss(expert_outputs: tf.Tensor) -> tf.Tensor:
    """Table 4 "Cos" (I): sum over pairs p<q of the row-mean |cos(o_p, o_q)|."""
    outputs = _check_rows(expert_outputs)
    norms = tf.sqrt(tf.reduce_sum(tf.square(outputs), axis=2, keepdims=True) + _EPS)
    unit = outputs / norms
    cos = tf.einsum("npd,nqd->npq", unit, unit)
    upper = tf.linalg.band_part(tf.ones_like(cos[0]), 0, -1) - tf.eye(tf.shape(cos)[1])
    return tf.reduce_sum(tf.reduce_mean(tf.abs(cos), axis=0) * upper)


def _double_centred_distances(x: tf.Tensor) -> tf.Tensor:
    """(n, d) -> (n, n) double-centred Euclidean distance matrix (Szekely's A_jk)."""
    squared = tf.reduce_sum(tf.square(x[:, None, :] - x[None, :, :]), axis=-1)
    distances = tf.sqrt(squared + _EPS)   # eps keeps the gradient finite on the diagonal
    return (distances - tf.reduce_mean(distances, axis=0, keepdims=True)
            - tf.reduce_mean(distances, axis=1, keepdims=True) + tf.reduce_mean(distances))


def distance_correlation_loss(expert_outputs: tf.Tensor) -> tf.Tensor:
    """Table 4 "dCorr" (Liu et al. 2022): sum over pairs p<q of the sample distance
    correlation dCor(O_p, O_q) over the n rows; O(M^2 n^2 d)."""
    outputs = _check_rows(expert_outputs)
    num_experts = outputs.shape[1]
    centred = [_double_centred_distances(outputs[:, m, :]) for m in range(num_experts)]
    variance = [tf.reduce_mean(a * a) for a in centred]
    total = tf.constant(0.0)
    for p, q in _pair_indices(num_experts):
        covariance = tf.reduce_mean(centred[p] * centred[q])
        total += tf.sqrt(tf.maximum(covariance, 0.0) + _EPS) / tf.sqrt(
            tf.sqrt(variance[p] * variance[q]) + _EPS)
    return total


def ole_loss(expert_outputs: tf.Tensor) -> tf.Tensor:
    """Table 4 "OLE (F-norm form)" (I: our reading of Lezama et al. 2018 with experts as
    the classes): sum over pairs p<q of ||U_p^T U_q||_F^2, U_m = O_m with unit-norm
    columns over the rows, i.e. squared cosines between the experts' feature subspaces."""
    outputs = _check_rows(expert_outputs)
    columns = outputs / tf.sqrt(tf.reduce_sum(tf.square(outputs), axis=0, keepdims=True) + _EPS)
    num_experts, dim = outputs.shape[1], outputs.shape[2]
    z = tf.reshape(columns, [-1, num_experts * dim])
    gram = tf.matmul(z, z, transpose_a=True)
    return tf.reduce_sum(tf.square(gram) * _off_diagonal_block_mask(num_experts, dim)) / 2.0


DISENTANGLE_LOSSES: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "cov": cross_expert_covariance_loss,
    "dot": dot_product_loss,
    "cos": cosine_similarity_loss,
    "dcorr": distance_correlation_loss,
    "ole": ole_loss,
}


def disentangle_loss(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if name not in DISENTANGLE_LOSSES:
        raise ValueError(f"unknown disentangling loss {name!r}; choose from {sorted(DISENTANGLE_LOSSES)} or 'none'")
    return DISENTANGLE_LOSSES[name]


def sample_rows(tensor: tf.Tensor, num_rows: int, seed=None) -> tf.Tensor:
    """Up to `num_rows` rows drawn without replacement (all rows when the batch is smaller;
    num_rows = 0 means every row)."""
    if num_rows == 0:
        return tensor
    n = tf.shape(tensor)[0]
    take = tf.minimum(n, num_rows)
    order = tf.argsort(tf.random.uniform([n], seed=seed))
    return tf.gather(tensor, order[:take])


def stratified_row_indices(domain: tf.Tensor, num_rows: int, num_domains: int, seed=None) -> tf.Tensor:
    """Indices of rows drawn without replacement with an equal quota per domain present in
    the batch (I): quota = max(1, num_rows // domains present); a domain with fewer rows
    gives all of them, so at most num_rows rows (more only when num_rows < domains present).
    At 1.5% of traffic a domain has ~0.5 of 32 uniform rows; here it has 6."""
    domain = tf.cast(tf.reshape(domain, [-1]), tf.int32)
    n = tf.shape(domain)[0]
    # Sort by domain, random order within a domain, then rank each row inside its domain.
    keys = tf.cast(domain, tf.float32) + tf.random.uniform([n], 0.0, 0.999, seed=seed)
    order = tf.argsort(keys)
    sorted_domain = tf.gather(domain, order)
    position = tf.range(n)
    first = tf.math.unsorted_segment_min(position, sorted_domain, num_domains)
    rank = position - tf.gather(first, sorted_domain)
    present = tf.reduce_sum(tf.cast(tf.math.bincount(domain, minlength=num_domains) > 0, tf.int32))
    quota = tf.maximum(1, num_rows // tf.maximum(present, 1))
    return tf.boolean_mask(order, rank < quota)


def standardise_units(rows: tf.Tensor) -> tf.Tensor:
    """(n, M, d) -> each unit centred and divided by its std over the n rows (I): the
    covariance loss of the result is a mean absolute cross-expert correlation, which
    shrinking an expert cannot lower. A constant (dead) unit maps to 0."""
    rows = tf.cast(rows, tf.float32)
    centred = rows - tf.reduce_mean(rows, axis=0, keepdims=True)
    return centred * tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=0, keepdims=True) + 1e-6)


def variance_hinge(rows: tf.Tensor, target: float) -> tf.Tensor:
    """VICReg's variance term (Bardes et al. 2021) over expert units, (I) here: the mean
    over all M*d units of max(0, target - std), std over the n rows (eps 1e-4 inside the
    root as VICReg). It charges for shrinking or silencing a unit, the cheap way to lower
    the covariance loss. A unit that is 0 on every row after a ReLU has no gradient; on the
    pre-activations it does."""
    rows = _check_rows(rows)
    std = tf.sqrt(tf.math.reduce_variance(rows, axis=0) + 1e-4)
    return tf.reduce_mean(tf.nn.relu(target - std))


def per_domain_bce(labels: tf.Tensor, logits: tf.Tensor, domain: tf.Tensor, num_domains: int) -> tf.Tensor:
    """DESIGN 5.6: sum over domains s of the mean BCE over the batch rows of domain s.
    An unsorted segment mean gives 0 for a domain absent from the batch."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(tf.math.unsorted_segment_mean(bce, domain, num_domains))
