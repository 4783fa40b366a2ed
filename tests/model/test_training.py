"""`fit` compiles with Adam and clipping, early-stops on val AUC and restores the best
weights."""
import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.features import WORLD_FEATURES
from crocodile.model.registry import build_model
from crocodile.model.training import MONITOR, fit


class _RecordWeights(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.by_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch.append((logs[MONITOR], [w.copy() for w in self.model.get_weights()]))


@pytest.mark.slow
def test_fit_early_stops_on_val_auc_and_restores_the_best_epoch(toy_data, vocab_sizes, tiny_hparams):
    features, labels = toy_data
    train = tf.data.Dataset.from_tensor_slices(({k: v[:1536] for k, v in features.items()}, labels[:1536])).batch(256)
    # Validation labels are noise: val AUC wanders, so patience 1 stops early.
    noise = np.random.default_rng(9).integers(0, 2, 512)
    val = tf.data.Dataset.from_tensor_slices(({k: v[1536:] for k, v in features.items()}, noise)).batch(512)
    model = build_model("mmoe", WORLD_FEATURES, vocab_sizes, tiny_hparams)
    recorder = _RecordWeights()
    history = fit(model, train, val, {**tiny_hparams, "early_stopping_patience": 1}, callbacks=[recorder],
                  epochs=8, verbose=0)
    assert isinstance(model.optimizer, tf.keras.optimizers.Adam)
    assert model.optimizer.global_clipnorm == 10.0
    aucs = history.history[MONITOR]
    best = int(np.argmax(aucs))
    assert len(aucs) == min(8, best + 2)          # stopped one epoch after the best one
    for got, want in zip(model.get_weights(), recorder.by_epoch[best][1]):
        np.testing.assert_allclose(got, want)
