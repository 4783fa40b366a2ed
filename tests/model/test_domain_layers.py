"""STAR's partitioned normalisation and AdaSparse's pruner follow their papers, not the
known-buggy public port: per-domain moving statistics used in inference; pruned units are
exactly 0; no state changes in inference."""
import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.domain_networks import FusionPruner
from crocodile.model.hparams import HParams
from crocodile.model.star import PartitionedNormalization


def test_partitioned_normalization_uses_each_domains_own_statistics():
    layer = PartitionedNormalization(num_domains=3, momentum=0.0)      # moving stats = last batch
    x = np.array([[1.0], [3.0], [10.0], [30.0], [7.0]], np.float32)
    domain = np.array([0, 0, 1, 1, 2], np.int32)                        # domain 2 has one row
    out = layer(x, domain, training=True).numpy()[:, 0]
    # Domain 0: mean 2, var 1 -> [-1, 1]; domain 1: mean 20, var 100 -> [-1, 1] (eps 1e-3).
    np.testing.assert_allclose(out[:4], [-1, 1, -1, 1], atol=1e-3)
    # Domain 2 (1 row): its moving statistics (initial 0 / 1) are used and not updated.
    assert out[4] == pytest.approx(7.0 / np.sqrt(1.001), rel=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy()[:, 0], [2.0, 20.0, 0.0])
    np.testing.assert_allclose(layer.moving_variance.numpy()[:, 0], [1.0, 100.0, 1.0])
    # Inference: moving statistics, so a row's output does not depend on its batch.
    alone = layer(x[:1], domain[:1], training=False).numpy()
    together = layer(x, domain, training=False).numpy()[:1]
    np.testing.assert_allclose(alone, together)
    assert alone[0, 0] == pytest.approx(-1.0, abs=1e-3)


def test_pruner_zeros_pruned_units_and_updates_alpha_only_in_training():
    hparams = HParams(adasparse_epsilon=0.25, adasparse_beta=2.0, adasparse_alpha_init=1.0,
                      adasparse_alpha_step=0.5, adasparse_alpha_max=1.8)
    pruner = FusionPruner(2, hparams)
    x = np.array([[1.0], [-1.0]], np.float32)
    pruner(x)
    pruner.dense.kernel.assign([[5.0, -5.0]])
    pruner.dense.bias.assign([0.0, 0.0])
    pi = pruner(x, training=False).numpy()
    s = 2.0 / (1.0 + np.exp(-5.0))                  # 2 * sigmoid(5), kept
    np.testing.assert_allclose(pi, [[s, 0.0], [0.0, s]], rtol=1e-5)   # 2*sigmoid(-5) < 0.25 -> exactly 0
    assert float(pruner.alpha) == 1.0
    pruner(x, training=True)
    pruner(x, training=True)
    assert float(pruner.alpha) == pytest.approx(1.8)     # 1 + 0.5 + 0.5, capped at 1.8
    assert (pruner(tf.constant(x), training=False).numpy() >= 0).all()
