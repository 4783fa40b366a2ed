"""TFX Trainer ``run_fn``: transformed examples -> trained model -> serving SavedModel.

Reads ``fn_args.custom_config`` (built by ``pipeline.trainer_custom_config``): the
model's registry name, hyperparameter overrides (crocodile.model.hparams; batch size and
epochs included), the feature config and the tf.distribute strategy. The pipeline's
train steps are split evenly over the epochs. Training is crocodile.model.training.fit (early stopping
on validation AUC, best weights restored). The export saves ``model.network`` only.

Besides the SavedModel it writes, under ``fn_args.model_run_dir`` (the ModelRun
artifact): TensorBoard logs, ``network/`` (a checkpoint of the trained network, so the
exported model can be checked against the Keras network) and ``run_info.json``.
"""
import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx_bsl.public import tfxio

from crocodile.model.features import LABEL_KEY, FeatureConfig
from crocodile.pipeline import configs

NETWORK_CHECKPOINT_DIR = "network"
NETWORK_CHECKPOINT_PREFIX = "ckpt"
RUN_INFO_FILENAME = "run_info.json"


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


def _dataset(fn_args, files, tft_output, batch_size: int) -> tf.data.Dataset:
    """(features, label) batches of transformed examples, repeated forever."""
    return fn_args.data_accessor.tf_dataset_factory(
        files,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_KEY),
        tft_output.transformed_metadata.schema,
    ).repeat()


def training_split_columns(fn_args, tft_output, columns) -> dict:
    """Named transformed columns of the TRAINING split (``fn_args.train_files``, never the eval
    files), read once, as NumPy arrays: for models whose training needs statistics of the
    training data (EDDA's alignment pairs; ``model.training_data_columns``). Computing them
    here keeps them on exactly the rows the model trains on, with no extra component."""
    import numpy as np

    dataset = fn_args.data_accessor.tf_dataset_factory(
        fn_args.train_files, tfxio.TensorFlowDatasetOptions(batch_size=65536, num_epochs=1, shuffle=False),
        tft_output.transformed_metadata.schema)
    parts = {c: [] for c in columns}
    for batch in dataset:
        for c in columns:
            parts[c].append(batch[c].numpy().reshape(-1))
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
    epochs, batch_size = hparams.epochs, hparams.batch_size
    train_steps = max(1, int(fn_args.train_steps))
    steps_per_epoch = max(1, train_steps // epochs)
    epochs = min(epochs, train_steps)
    eval_steps = max(1, int(fn_args.eval_steps or configs.EVAL_STEPS))

    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    sizes = vocab_sizes(tft_output, feature_config)
    train_ds = _dataset(fn_args, fn_args.train_files, tft_output, batch_size)
    eval_ds = _dataset(fn_args, fn_args.eval_files, tft_output, batch_size)

    strategy = distribution_strategy(custom.get("distribution_strategy", "auto"))
    logging.info("Training %s with %s: %d epochs x %d steps, batch %d, vocab sizes %s",
                 model_name, type(strategy).__name__, epochs, steps_per_epoch, batch_size, sizes)
    with strategy.scope():
        model = registry.build_model(model_name, feature_config, sizes, hparams)
    if model.training_data_columns:
        model.prepare_training_data(training_split_columns(fn_args, tft_output, model.training_data_columns))
    tensorboard = tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch")
    history = training.fit(
        model, train_ds, eval_ds, hparams, callbacks=[tensorboard], epochs=epochs,
        steps_per_epoch=steps_per_epoch, validation_steps=eval_steps)

    export_serving_model(model.network, tft_output, feature_config, fn_args.serving_model_dir)
    tf.train.Checkpoint(network=model.network).write(network_checkpoint_path(fn_args.model_run_dir))
    run_info = {
        "model_name": model_name, "hparams": hparams.to_dict(), "vocab_sizes": sizes,
        "epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, RUN_INFO_FILENAME), "w") as f:
        json.dump(run_info, f, indent=2)
