"""Gates, per-domain towers and the per-domain segment-mean BCE, on hand-computed values."""
import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.blocks import DomainTowers, select_domain
from crocodile.model.gates import ElementwiseGate, ExpertGate, mix_element_wise, mix_expert_level
from crocodile.model.losses import per_domain_bce


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_expert_gate_is_a_softmax_of_each_domains_linear_map():
    gate = ExpertGate(num_gates=2, num_experts=3)
    x = np.array([[1.0, 0.0], [0.5, -1.0]], np.float32)
    gate(x)
    kernel = np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 10.0
    bias = np.array([[0.0, 0.1, 0.2], [0.3, 0.0, -0.3]], np.float32)
    gate.logits.kernel.assign(kernel)
    gate.logits.bias.assign(bias)
    weights = gate(x).numpy()
    assert weights.shape == (2, 2, 3)
    expected = _softmax(np.einsum("ni,gio->ngo", x, kernel) + bias, axis=-1)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    # Row 0, gate 0 by hand: logits = [0, .1, .2] + [0, .1, .2] = [0, .2, .4].
    np.testing.assert_allclose(weights[0, 0], np.exp([0, .2, .4]) / np.exp([0, .2, .4]).sum(), rtol=1e-5)


def test_element_wise_gate_sums_to_one_over_experts_for_every_dimension():
    gate = ElementwiseGate(num_gates=3, num_experts=4, dim=5)
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    weights = gate(x).numpy()
    assert weights.shape == (7, 3, 4, 5)
    np.testing.assert_allclose(weights.sum(axis=2), np.ones((7, 3, 5)), rtol=1e-5)
    assert not np.allclose(weights, 0.25)          # really per dimension, not uniform


def test_own_domain_gate_equals_selecting_from_all_gates():
    gate = ElementwiseGate(num_gates=3, num_experts=4, dim=5)
    x = np.random.default_rng(2).normal(size=(9, 6)).astype(np.float32)
    domain = np.array([2, 0, 1, 1, 2, 0, 0, 2, 1], np.int32)
    everything = gate(x).numpy()
    own = gate(x, domain).numpy()
    np.testing.assert_allclose(own, everything[np.arange(9), domain], rtol=1e-5, atol=1e-7)


def test_element_wise_gate_hand_values():
    gate = ElementwiseGate(num_gates=1, num_experts=2, dim=2)
    x = np.array([[1.0]], np.float32)
    gate(x)
    # logits laid out (M, d) = [[l00, l01], [l10, l11]] = [[0, 1], [ln 3, 1]]
    gate.logits.kernel.assign(np.array([[[0.0, 1.0, np.log(3.0), 1.0]]], np.float32))
    gate.logits.bias.assign(np.zeros((1, 4), np.float32))
    weights = gate(x).numpy()[0, 0]
    np.testing.assert_allclose(weights, [[0.25, 0.5], [0.75, 0.5]], rtol=1e-5)
    outputs = np.array([[[4.0, 2.0], [8.0, 6.0]]], np.float32)                # (N=1, M=2, d=2)
    mixed = mix_element_wise(weights[None, None], outputs).numpy()
    np.testing.assert_allclose(mixed, [[[0.25 * 4 + 0.75 * 8, 0.5 * 2 + 0.5 * 6]]], rtol=1e-5)


def test_expert_level_mix_hand_values():
    weights = np.array([[[0.25, 0.75]]], np.float32)                          # (N=1, G=1, M=2)
    outputs = np.array([[[4.0, 2.0], [8.0, 6.0]]], np.float32)
    np.testing.assert_allclose(mix_expert_level(weights, outputs).numpy(), [[[7.0, 5.0]]])


def test_domain_towers_pick_each_rows_own_domain():
    towers = DomainTowers(num_domains=3, units=[4])
    x = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    domain = np.array([0, 1, 2, 2, 1, 0], np.int32)
    picked = towers(x, domain).numpy()
    all_domains = towers.towers(x).numpy()[..., 0]
    np.testing.assert_allclose(picked, all_domains[np.arange(6), domain], rtol=1e-6)
    np.testing.assert_allclose(select_domain(tf.constant(all_domains), domain).numpy(), picked)


def test_per_domain_bce_sums_domain_means_and_an_absent_domain_adds_zero():
    labels = np.array([1, 0, 1], np.int64)
    logits = np.array([0.0, np.log(3.0), -np.log(3.0)], np.float32)
    domain = np.array([0, 0, 2], np.int32)        # domain 1 absent from the batch
    # BCE: row 0: ln 2; row 1: -ln(1 - 3/4) = ln 4; row 2: -ln(1/4) = ln 4.
    expected = (np.log(2.0) + np.log(4.0)) / 2.0 + np.log(4.0)
    assert float(per_domain_bce(labels, logits, domain, num_domains=3)) == pytest.approx(expected, rel=1e-5)
