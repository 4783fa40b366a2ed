"""cross_expert_covariance_loss against a brute-force pairwise NumPy computation."""
import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.losses import (DISENTANGLE_LOSSES, cosine_similarity_loss, cross_expert_covariance_loss,
                                    distance_correlation_loss, dot_product_loss, sample_rows)


def brute_force_covariance_loss(outputs: np.ndarray) -> float:
    """DESIGN 5.3 written as the paper's double sum over expert pairs p < q."""
    n, num_experts, dim = outputs.shape
    centred = outputs - outputs.mean(axis=0, keepdims=True)
    total = 0.0
    for p in range(num_experts):
        for q in range(p + 1, num_experts):
            covariance = centred[:, p, :].T @ centred[:, q, :] / (n - 1)
            total += np.abs(covariance).sum()
    return total / dim ** 2


@pytest.mark.parametrize("shape,seed", [((32, 5, 8), 0), ((7, 2, 3), 1), ((64, 4, 16), 2)])
def test_matches_brute_force_on_random_relu_outputs(shape, seed):
    outputs = np.maximum(np.random.default_rng(seed).normal(size=shape), 0.0).astype(np.float32)
    assert float(cross_expert_covariance_loss(outputs)) == pytest.approx(brute_force_covariance_loss(outputs), rel=1e-5)


def test_dead_experts_keep_a_finite_gradient():
    outputs = np.maximum(np.random.default_rng(3).normal(size=(32, 4, 6)), 0.0).astype(np.float32)
    outputs[:, 1, :] = 0.0           # a dead expert: all-zero outputs
    outputs[:, 3, :2] = 0.0          # dead units inside a live expert
    variable = tf.Variable(outputs)
    with tf.GradientTape() as tape:
        loss = cross_expert_covariance_loss(variable)
    gradient = tape.gradient(loss, variable).numpy()
    assert float(loss) == pytest.approx(brute_force_covariance_loss(outputs), rel=1e-5)
    assert np.all(np.isfinite(gradient))
    all_dead = tf.Variable(np.zeros((32, 3, 4), np.float32))
    with tf.GradientTape() as tape:
        loss = cross_expert_covariance_loss(all_dead)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(tape.gradient(loss, all_dead).numpy()))


def test_zero_when_experts_are_uncorrelated_by_construction():
    # Rows of a Sylvester-Hadamard matrix are orthogonal and, except row 0, have mean 0.
    # Expert m's every dimension is a non-negative multiple-plus-offset of its own row, so
    # every cross-expert covariance entry is exactly 0, while within-expert ones are not.
    hadamard = np.array([[1.0]])
    for _ in range(3):
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    n, num_experts, dim = 8, 3, 4
    outputs = np.zeros((n, num_experts, dim), np.float32)
    for m in range(num_experts):
        for i in range(dim):
            outputs[:, m, i] = (i + 1) * (hadamard[m + 1] + 1.0)     # values in {0, 2(i+1)} >= 0
    assert float(cross_expert_covariance_loss(outputs)) == pytest.approx(0.0, abs=1e-7)
    copies = np.repeat(outputs[:, :1], 2, axis=1)                      # identical experts
    assert float(cross_expert_covariance_loss(copies)) > 0.5


def test_needs_two_rows_and_three_axes():
    with pytest.raises(ValueError):
        cross_expert_covariance_loss(np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError):
        cross_expert_covariance_loss(np.ones((4, 6), np.float32))


def test_scales_with_the_square_of_the_output_scale():
    outputs = np.maximum(np.random.default_rng(4).normal(size=(32, 3, 5)), 0).astype(np.float32)
    base = float(cross_expert_covariance_loss(outputs))
    assert float(cross_expert_covariance_loss(3.0 * outputs)) == pytest.approx(9.0 * base, rel=1e-5)


def test_sample_rows_draws_distinct_rows_and_caps_at_the_batch():
    rows = np.arange(100, dtype=np.float32).reshape(100, 1, 1)
    sampled = sample_rows(tf.constant(rows), 32).numpy().ravel()
    assert len(sampled) == 32 and len(set(sampled)) == 32
    assert sample_rows(tf.constant(rows[:5]), 32).shape[0] == 5


def test_table4_alternatives_on_hand_checked_cases():
    rng = np.random.default_rng(5)
    expert = np.maximum(rng.normal(size=(16, 1, 6)), 0).astype(np.float32) + 0.1
    identical = np.concatenate([expert, expert], axis=1)
    assert float(cosine_similarity_loss(identical)) == pytest.approx(1.0, abs=1e-4)
    assert float(distance_correlation_loss(identical)) == pytest.approx(1.0, abs=1e-3)
    expected_dot = np.mean(np.sum(expert[:, 0] * expert[:, 0], axis=1)) / 6
    assert float(dot_product_loss(identical)) == pytest.approx(expected_dot, rel=1e-5)
    orthogonal = np.zeros((4, 2, 2), np.float32)
    orthogonal[:, 0, 0], orthogonal[:, 1, 1] = [1, 2, 3, 4], [4, 1, 2, 3]
    assert float(dot_product_loss(orthogonal)) == 0.0
    assert float(cosine_similarity_loss(orthogonal)) == pytest.approx(0.0, abs=1e-6)
    for name, loss in DISENTANGLE_LOSSES.items():
        variable = tf.Variable(np.maximum(rng.normal(size=(32, 3, 4)), 0).astype(np.float32))
        with tf.GradientTape() as tape:
            value = loss(variable)
        assert np.isfinite(float(value)), name
        assert np.all(np.isfinite(tape.gradient(value, variable).numpy())), name
