"""Run the pipeline's TFT transform in-process, for benchmarks, notebooks and tests.

The TFX Transform component is the production path. Benchmarks that train many models
on one split need the same features without running a pipeline per model, so this
module analyses the training split with the very same ``preprocessing_fn`` (TFT on the
Beam DirectRunner), writes the transform graph, and applies it with TFT's Keras layer
(the layer every exported SavedModel embeds) to both splits.
"""
import dataclasses
import functools
import glob
import os
from typing import Dict, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from crocodile.errors import UserError
from crocodile.model.features import (
    LABEL_KEY,
    OPTIONAL_COLUMNS,
    POSITION_KEY,
    REQUEST_ID_KEY,
    USER_KEY,
    FeatureConfig,
)
from crocodile.pipeline.preprocessing import CUSTOM_CONFIG_FEATURES_KEY, preprocessing_fn

_TF_DTYPES = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
_NUMPY_DTYPES = {"bytes": object, "int64": np.int64, "float": np.float32}
# Optional columns kept next to the features when the logs have them: they identify an
# impression, so evaluations can join the ground truth (request_id, position).
IMPRESSION_KEY_COLUMNS = (REQUEST_ID_KEY, POSITION_KEY)
_MISSING = {"bytes": b"", "int64": -1, "float": float("nan")}
TRANSFORM_BATCH_ROWS = 65536


@dataclasses.dataclass
class LocalTransformResult:
    """Transformed splits, aligned row by row with the raw log rows they came from."""

    tft_output: tft.TFTransformOutput
    train: Dict[str, np.ndarray]  # `k_xf` features, `click`, raw `user_id`
    eval: Dict[str, np.ndarray]
    train_raw: pd.DataFrame
    eval_raw: pd.DataFrame


def raw_input_columns(config: FeatureConfig) -> Dict[str, str]:
    """Columns the transform reads, with their tf.Example dtypes."""
    columns = dict(config.raw_feature_columns)
    columns[LABEL_KEY] = "int64"
    return columns


def read_logs(data_dir: str, columns: Dict[str, str], max_rows: Optional[int] = None) -> pd.DataFrame:
    """Reads DIR/logs/*.csv or DIR/logs/*.tfrecord.gz into one DataFrame (all columns kept)."""
    log_dir = os.path.join(data_dir, "logs")
    csv_files = sorted(glob.glob(os.path.join(log_dir, "*.csv")))
    tfrecord_files = sorted(glob.glob(os.path.join(log_dir, "*.tfrecord*")))
    if not csv_files and not tfrecord_files:
        raise UserError(f"{log_dir}: no *.csv or *.tfrecord.gz log files")
    if csv_files:
        dtype = {k: (str if t == "bytes" else None) for k, t in columns.items()}
        frames, rows = [], 0
        for path in csv_files:
            frame = pd.read_csv(path, dtype={k: v for k, v in dtype.items() if v}, nrows=None if max_rows is None else max_rows - rows)
            frames.append(frame)
            rows += len(frame)
            if max_rows is not None and rows >= max_rows:
                break
        data = pd.concat(frames, ignore_index=True)
    else:
        data = _read_tfrecords(tfrecord_files, columns, max_rows)
    missing = [k for k in columns if k not in data.columns]
    if missing:
        raise UserError(f"{log_dir}: logs lack required column(s) {missing}")
    return data


def _read_tfrecords(files, columns: Dict[str, str], max_rows: Optional[int]) -> pd.DataFrame:
    extra = {k: OPTIONAL_COLUMNS[k] for k in IMPRESSION_KEY_COLUMNS if k not in columns}
    spec = {k: tf.io.FixedLenFeature([], _TF_DTYPES[t]) for k, t in columns.items()}
    # Optional columns parse with a sentinel default and are dropped when no row has them.
    spec.update({k: tf.io.FixedLenFeature([], _TF_DTYPES[t], default_value=_MISSING[t]) for k, t in extra.items()})
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(TRANSFORM_BATCH_ROWS)
    if max_rows is not None:
        dataset = dataset.unbatch().take(max_rows).batch(TRANSFORM_BATCH_ROWS)
    parts = {k: [] for k in spec}
    for batch in dataset.map(lambda records: tf.io.parse_example(records, spec)):
        for key, values in batch.items():
            parts[key].append(values.numpy())
    data = {k: np.concatenate(v) for k, v in parts.items()}
    for key, kind in extra.items():
        if np.all(data[key] == _MISSING[kind]):
            del data[key]
    for key, kind in {**columns, **extra}.items():
        if kind == "bytes" and key in data:
            data[key] = data[key].astype(str)
    return pd.DataFrame(data)


def _split(data: pd.DataFrame, eval_fraction: float, seed: int):
    is_eval = np.random.default_rng(seed).random(len(data)) < eval_fraction
    return data[~is_eval].reset_index(drop=True), data[is_eval].reset_index(drop=True)


def _analyze(train: pd.DataFrame, columns: Dict[str, str], config: FeatureConfig, out_dir: str) -> str:
    """Runs TFT analyzers on the training rows with Beam; returns the transform_fn folder."""
    spec = {k: tf.io.FixedLenFeature([], _TF_DTYPES[t]) for k, t in columns.items()}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    instances = train[list(columns)].to_dict("records")
    fn = functools.partial(preprocessing_fn, custom_config={CUSTOM_CONFIG_FEATURES_KEY: config.to_dict()})
    with tft_beam.Context(temp_dir=os.path.join(out_dir, "tmp"), force_tf_compat_v1=False):
        transform_fn = (instances, metadata) | tft_beam.AnalyzeDataset(fn)
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    return out_dir


def apply_transform(tft_output: tft.TFTransformOutput, data: pd.DataFrame, columns: Dict[str, str]) -> Dict[str, np.ndarray]:
    """Applies the saved transform graph with TFT's Keras layer, in batches."""
    layer = tft_output.transform_features_layer()
    outputs: Dict[str, list] = {}
    for start in range(0, len(data), TRANSFORM_BATCH_ROWS):
        chunk = data.iloc[start:start + TRANSFORM_BATCH_ROWS]
        raw = {k: tf.constant(chunk[k].to_numpy().astype(_NUMPY_DTYPES[t])) for k, t in columns.items()}
        for key, value in layer(raw).items():
            outputs.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outputs.items()}


def analyze_and_transform(
    data_dir: str,
    out_dir: str,
    feature_config: FeatureConfig,
    eval_fraction: float = 0.2,
    max_rows: Optional[int] = None,
    seed: int = 0,
) -> LocalTransformResult:
    """Reads logs, splits them (seeded, by row), analyses train, transforms both splits."""
    columns = raw_input_columns(feature_config)
    data = read_logs(data_dir, columns, max_rows)
    train_raw, eval_raw = _split(data, eval_fraction, seed)
    os.makedirs(out_dir, exist_ok=True)
    tft_output = tft.TFTransformOutput(_analyze(train_raw, columns, feature_config, out_dir))
    splits = []
    for frame in (train_raw, eval_raw):
        arrays = apply_transform(tft_output, frame, columns)
        arrays[USER_KEY] = frame[USER_KEY].to_numpy().astype(str)
        splits.append(arrays)
    return LocalTransformResult(tft_output, splits[0], splits[1], train_raw, eval_raw)


def make_dataset(arrays: Dict[str, np.ndarray], batch_size: int, shuffle: bool = True, seed: int = 0) -> tf.data.Dataset:
    """(features, label) batches from transformed arrays, as the Trainer's input_fn yields them."""
    features = {k: v for k, v in arrays.items() if k.endswith("_xf")}
    dataset = tf.data.Dataset.from_tensor_slices((features, arrays[LABEL_KEY]))
    if shuffle:
        dataset = dataset.shuffle(min(len(arrays[LABEL_KEY]), 200_000), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
