"""The data folder layout, written by `crocodile data generate|convert` and read by `describe`.

    DIR/logs/part-00000.csv | part-00000.tfrecord.gz   impressions, canonical schema
    DIR/feature_config.json                             FeatureConfig.save
    DIR/world/                                          World.save (generate only)
    DIR/ground_truth/part-00000.csv                     true probabilities (generate only)

Ground-truth shards are aligned row for row with the log shards (same writer, same
chunks), and also carry request_id and position to join on.
"""
import glob
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from crocodile.errors import UserError
from crocodile.model import features
from crocodile.simulation import log_writers

LOGS_DIR = "logs"
WORLD_DIR = "world"
GROUND_TRUTH_DIR = "ground_truth"
FEATURE_CONFIG_FILE = "feature_config.json"

# tf.Example dtypes of the world's log columns (price is float, ids and profile fields bytes).
WORLD_LOG_DTYPES = {
    features.REQUEST_ID_KEY: "bytes", features.TIMESTAMP_KEY: "int64", features.USER_KEY: "bytes",
    features.ITEM_KEY: "bytes", features.DOMAIN_KEY: "int64", features.POSITION_KEY: "int64",
    "user_segment": "bytes", "user_region": "bytes", "item_category": "bytes",
    features.PRICE_KEY: "float", features.LABEL_KEY: "int64", features.PURCHASE_KEY: "int64",
}


def log_files(data_dir: str) -> List[str]:
    files = sorted(glob.glob(os.path.join(data_dir, LOGS_DIR, "part-*")))
    if not files:
        raise UserError(f"{os.path.join(data_dir, LOGS_DIR)}: no part-* log files; not a data folder")
    return files


def write_world_dataset(out_dir: str, world, num_impressions: int, seed: int, fmt: str = "csv",
                        num_shards: int = 1, progress: bool = True) -> int:
    """Generates num_impressions logged impressions into the (empty, staged) out_dir."""
    from tqdm import tqdm

    from crocodile.simulation import logs

    world.save(os.path.join(out_dir, WORLD_DIR))
    features.WORLD_FEATURES.save(os.path.join(out_dir, FEATURE_CONFIG_FILE))
    log_writer = log_writers.ShardedWriter(os.path.join(out_dir, LOGS_DIR), fmt, num_shards, WORLD_LOG_DTYPES)
    truth_writer = log_writers.ShardedWriter(os.path.join(out_dir, GROUND_TRUTH_DIR), "csv", num_shards)
    with log_writer, truth_writer, tqdm(total=num_impressions, unit="imp", unit_scale=True,
                                        desc="generate", disable=not progress) as bar:
        for chunk_logs, chunk_truth in logs.iterate_chunks(world, num_impressions, seed):
            log_writer.write(chunk_logs)
            truth_writer.write(chunk_truth)
            bar.update(len(chunk_logs[features.LABEL_KEY]))
    return log_writer.rows


def _read_csv(paths: Iterable[str], columns: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    import pandas as pd

    frames = []
    for path in paths:
        frame = pd.read_csv(path, usecols=columns, dtype={c: str for c in (columns or ()) if c in WORLD_LOG_DTYPES
                                                            and WORLD_LOG_DTYPES[c] == "bytes"})
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    return {c: frame[c].to_numpy() for c in frame.columns}


def _read_tfrecord(paths: Sequence[str], columns: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    import tensorflow as tf

    first = next(iter(tf.data.TFRecordDataset(paths[:1], compression_type="GZIP").take(1)), None)
    if first is None:
        return {c: np.array([]) for c in (columns or ())}
    example = tf.train.Example.FromString(first.numpy())
    kinds = {k: f.WhichOneof("kind") for k, f in example.features.feature.items()}
    wanted = list(columns) if columns else sorted(kinds)
    tf_types = {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}
    spec = {c: tf.io.FixedLenFeature([], tf_types[kinds[c]]) for c in wanted}
    parts: Dict[str, list] = {c: [] for c in wanted}
    dataset = tf.data.TFRecordDataset(list(paths), compression_type="GZIP").batch(65536)
    for batch in dataset.map(lambda records: tf.io.parse_example(records, spec)):
        for c in wanted:
            parts[c].append(batch[c].numpy())
    out = {c: np.concatenate(v) for c, v in parts.items()}
    for c in wanted:
        if kinds[c] == "bytes_list":
            out[c] = out[c].astype(str)
    return out


def read_logs(data_dir: str, columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Columns of every log shard (CSV or TFRecord), concatenated in shard order."""
    files = log_files(data_dir)
    if files[0].endswith(log_writers.TFRECORD_SUFFIX):
        return _read_tfrecord(files, columns)
    return _read_csv(files, columns)


def read_ground_truth(data_dir: str, columns: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    files = sorted(glob.glob(os.path.join(data_dir, GROUND_TRUTH_DIR, "part-*.csv")))
    if not files:
        raise UserError(f"{os.path.join(data_dir, GROUND_TRUTH_DIR)}: no ground truth (only `data generate` writes it)")
    return _read_csv(files, columns)
