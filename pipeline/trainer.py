"""TFX Trainer ``run_fn``: raw examples + the TFT graph -> trained model -> serving SavedModel.

Reads ``fn_args.custom_config`` (built by ``pipeline.trainer_custom_config``): the
model's registry name, hyperparameter overrides (crocodile.model.hparams; batch size and
epochs included), the feature config and the tf.distribute strategy. The training
budget follows the data (``training_budget``): without a step count, every epoch is one
pass over the training split (steps from its row count) and validation one pass over the
eval split, up to ``hparams.epochs`` epochs that early stopping on validation AUC ends
(best weights restored; crocodile.model.training.fit); a 200-row run trains for seconds.
A step count given to the pipeline (``--train-steps``) is spread evenly over the epochs
instead. The export saves ``model.network`` only.

Besides the SavedModel it writes, under ``fn_args.model_run_dir`` (the ModelRun
artifact): TensorBoard logs, ``network/`` (a checkpoint of the trained network, so the
exported model can be checked against the Keras network) and ``run_info.json``.
"""
import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from crocodile.model.features import LABEL_KEY, FeatureConfig
from crocodile.pipeline import configs

NETWORK_CHECKPOINT_DIR = "network"
NETWORK_CHECKPOINT_PREFIX = "ckpt"
RUN_INFO_FILENAME = "run_info.json"
SHUFFLE_BUFFER = 10_000


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``name`` (see configs.DISTRIBUTION_STRATEGIES)."""
    if name == "auto":
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
        if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
            name = "multi_worker"
        elif tf.config.list_logical_devices("GPU"):
            name = "mirrored"
        else:
            name = "default"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _dataset(files, tft_output, feature_config: FeatureConfig, batch_size: int,
             training: bool = True) -> tf.data.Dataset:
    """(features, label) batches from raw examples, transformed by the TFT graph; for training
    shuffled and repeated forever, else one pass in file order.

    Transform does not materialise transformed examples (it only analyses the training
    split); the transform runs here, batched, in the same graph the serving signature
    uses. Only the model's raw inputs and the label are parsed: log-only columns may be
    absent. The order is shuffled within a 10,000-row buffer (ExampleGen has already
    reshuffled the rows).
    """
    from crocodile.serving.export import serving_feature_spec

    spec = dict(serving_feature_spec(tft_output, feature_config),
                **{LABEL_KEY: tft_output.raw_feature_spec()[LABEL_KEY]})
    transform = tft_output.transform_features_layer()
    paths = sorted(path for pattern in files for path in tf.io.gfile.glob(pattern))

    def parse_and_transform(serialized):
        transformed = dict(transform(tf.io.parse_example(serialized, spec)))
        return transformed, transformed.pop(LABEL_KEY)

    if training:
        records = tf.data.TFRecordDataset(paths, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
        records = records.shuffle(SHUFFLE_BUFFER).repeat()
    else:
        records = tf.data.TFRecordDataset(paths, compression_type="GZIP")
    return (records.batch(batch_size)
            .map(parse_and_transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def count_records(file_patterns) -> int:
    """Records in the gzipped TFRecord files of a split (read, not parsed)."""
    files = [f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
    if not files:
        return 0
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    return int(dataset.batch(8192).reduce(tf.constant(0, tf.int64),
                                          lambda count, batch: count + tf.size(batch, tf.int64)))


def training_budget(train_rows: int, eval_rows: int, batch_size: int, epochs: int,
                    train_steps=None, eval_steps=None):
    """(epochs, steps_per_epoch, validation_steps).

    Without ``train_steps``: ``epochs`` passes over ``train_rows`` (the last batch may be
    partial: ceil), validation over all ``eval_rows``. With ``train_steps``: that total
    spread evenly over the epochs (at least one step each). ``eval_steps`` caps validation.
    """
    if train_steps:
        epochs = min(epochs, int(train_steps))
        steps_per_epoch = max(1, int(train_steps) // epochs)
    else:
        steps_per_epoch = max(1, -(-int(train_rows) // batch_size))
    validation_steps = max(1, -(-int(eval_rows) // batch_size))
    if eval_steps:
        validation_steps = min(validation_steps, int(eval_steps))
    return epochs, steps_per_epoch, validation_steps


class EpochProgress(tf.keras.callbacks.Callback):
    """One line per epoch on stdout: the metrics, the time it took and the ETA if it runs to the cap."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.started = None

    def on_train_begin(self, logs=None):
        import time

        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        import time

        elapsed = time.time() - self.started
        done = epoch + 1
        eta = elapsed / done * (self.epochs - done)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items()
                          if k in ("loss", "auc", "val_loss", "val_auc"))
        print(f"    Trainer: epoch {done}/{self.epochs} ({self.steps_per_epoch} steps): {shown}; "
              f"{elapsed:.0f} s so far" + (f", at most {eta:.0f} s to go" if done < self.epochs else ""),
              flush=True)


def training_split_columns(train_files, tft_output, feature_config: FeatureConfig, columns) -> dict:
    """Named transformed columns (the label included) of the TRAINING split (``train_files``,
    never the eval files), read once in file order through the same transform as training, as
    NumPy arrays: for models whose training needs statistics of the training data (EDDA's
    alignment pairs; ``model.training_data_columns``). Computing them here keeps them on
    exactly the rows the model trains on, with no extra component."""
    import numpy as np

    parts = {c: [] for c in columns}
    for features, labels in _dataset(train_files, tft_output, feature_config, 65536, training=False):
        for c in columns:
            parts[c].append((labels if c == LABEL_KEY else features[c]).numpy().reshape(-1))
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in parts.items()}


def network_checkpoint_path(model_run_dir: str) -> str:
    return os.path.join(model_run_dir, NETWORK_CHECKPOINT_DIR, NETWORK_CHECKPOINT_PREFIX)


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (GenericExecutor)."""
    from crocodile.model import registry, training
    from crocodile.model.hparams import resolve
    from crocodile.pipeline.preprocessing import vocab_sizes
    from crocodile.serving.export import export_serving_model

    custom = fn_args.custom_config or {}
    feature_config = FeatureConfig.from_dict(custom["feature_config"])
    model_name = custom.get("model_name", configs.DEFAULT_MODEL)
    hparams = resolve(model_name, custom.get("hparams") or {})
    # The run's weights, dropout and shuffles follow hparams.seed: the same Examples artifact
    # (its record order included) and hparams train the same model. A fresh ExampleGen run may
    # write the split in another order (Beam workers), which is then another retrain.
    tf.keras.utils.set_random_seed(hparams.seed)
    batch_size = hparams.batch_size
    train_rows, eval_rows = count_records(fn_args.train_files), count_records(fn_args.eval_files)
    epochs, steps_per_epoch, eval_steps = training_budget(
        train_rows, eval_rows, batch_size, hparams.epochs, fn_args.train_steps, fn_args.eval_steps)

    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    sizes = vocab_sizes(tft_output, feature_config)
    train_ds = _dataset(fn_args.train_files, tft_output, feature_config, batch_size)
    eval_ds = _dataset(fn_args.eval_files, tft_output, feature_config, batch_size)

    strategy = distribution_strategy(custom.get("distribution_strategy", "auto"))
    logging.info("Training %s with %s: %d epochs x %d steps, batch %d, vocab sizes %s",
                 model_name, type(strategy).__name__, epochs, steps_per_epoch, batch_size, sizes)
    print(f"    Trainer: {model_name}, {train_rows:,} training rows, batch {batch_size}: up to {epochs} "
          f"epochs x {steps_per_epoch} steps (early stopping on validation AUC over {eval_steps} batches)",
          flush=True)
    with strategy.scope():
        model = registry.build_model(model_name, feature_config, sizes, hparams)
    if model.training_data_columns:
        model.prepare_training_data(training_split_columns(fn_args.train_files, tft_output, feature_config,
                                                           model.training_data_columns))
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")
    history = training.fit(
        model, train_ds, eval_ds, hparams, callbacks=[tensorboard, EpochProgress(epochs, steps_per_epoch)],
        epochs=epochs, steps_per_epoch=steps_per_epoch, validation_steps=eval_steps, verbose=0)

    export_serving_model(model.network, tft_output, feature_config, fn_args.serving_model_dir)
    tf.train.Checkpoint(network=model.network).write(network_checkpoint_path(fn_args.model_run_dir))
    run_info = {
        "model_name": model_name, "hparams": hparams.to_dict(), "vocab_sizes": sizes,
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
        "validation_steps": eval_steps, "train_rows": train_rows, "eval_rows": eval_rows,
        "epochs_run": len(history.history.get("loss", [])),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, RUN_INFO_FILENAME), "w") as f:
        json.dump(run_info, f, indent=2)
