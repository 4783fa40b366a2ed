"""`fit`: the one training loop of benchmarks, the TFX Trainer and tests.

Adam with gradient clipping, early stopping on validation AUC (metric 'auc', Keras logs
it as 'val_auc') with the best epoch's weights restored. Build the model inside
`strategy.scope()`; `fit` compiles inside the model's own strategy scope, so the same
code runs under MirroredStrategy / MultiWorkerMirroredStrategy.
"""
from typing import Iterable, Optional

import tensorflow as tf

from crocodile.model.hparams import HParams, resolve

MONITOR = "val_auc"


def make_optimizer(hparams: HParams) -> tf.keras.optimizers.Optimizer:
    # Clip the global gradient norm at 10, as FuxiCTR/STEM's clip_grad_norm_ (DESIGN 5.8).
    return tf.keras.optimizers.Adam(learning_rate=hparams.learning_rate, global_clipnorm=hparams.clipnorm)


def compile_model(model: tf.keras.Model, hparams: HParams) -> None:
    with model.distribute_strategy.scope():
        model.compile(optimizer=make_optimizer(hparams))


def fit(model, train_ds: tf.data.Dataset, eval_ds: Optional[tf.data.Dataset], hparams=None,
        callbacks: Iterable[tf.keras.callbacks.Callback] = (), epochs: Optional[int] = None,
        steps_per_epoch: Optional[int] = None, validation_steps: Optional[int] = None, verbose: int = 2):
    """Compiles and trains `model`; returns the Keras History.

    hparams: HParams or a dict (defaults: the model's own `hparams`). With `eval_ds`, stops
    when val AUC has not improved for `early_stopping_patience` epochs and restores the
    weights of the best epoch.
    """
    if hparams is None:
        hparams = model.hparams
    elif not isinstance(hparams, HParams):
        hparams = resolve(model.name, hparams)
    compile_model(model, hparams)
    callbacks = list(callbacks)
    if eval_ds is not None:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor=MONITOR, mode="max", patience=hparams.early_stopping_patience,
            restore_best_weights=True))
    return model.fit(
        train_ds, validation_data=eval_ds, epochs=epochs or hparams.epochs,
        steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
        callbacks=callbacks, verbose=verbose)
