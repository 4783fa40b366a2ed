"""The data folder a pipeline run reads (layout in CONTRACTS: DIR/logs/, DIR/feature_config.json).

Local runs look at the files before the pipeline is built: the log format picks the
ExampleGen, the feature config goes into Transform's and Trainer's custom config, and
the rows per domain decide which domains get an Evaluator threshold.
"""
import collections
import glob
import os
from typing import Dict

from crocodile.errors import UserError
from crocodile.model.features import DOMAIN_KEY, WORLD_FEATURES, FeatureConfig

LOGS_SUBDIR = "logs"
FEATURE_CONFIG_FILENAME = "feature_config.json"
CSV, TFRECORD = "csv", "tfrecord"
_SUFFIXES = {CSV: (".csv",), TFRECORD: (".tfrecord", ".tfrecord.gz", ".gz")}


def logs_dir(data_dir: str) -> str:
    return os.path.join(data_dir, LOGS_SUBDIR)


def log_files(data_dir: str):
    return sorted(f for f in glob.glob(os.path.join(logs_dir(data_dir), "*")) if os.path.isfile(f))


def detect_format(data_dir: str) -> str:
    """``csv`` or ``tfrecord`` from the file names under DIR/logs/ (all files must agree)."""
    files = log_files(data_dir)
    if not files:
        raise UserError(f"--data {data_dir}: no log files under {logs_dir(data_dir)}/")
    formats = {fmt for f in files for fmt, suffixes in _SUFFIXES.items() if f.endswith(suffixes)}
    if len(formats) != 1:
        raise UserError(f"--data {data_dir}: {logs_dir(data_dir)}/ must hold only *.csv or only "
                        f"*.tfrecord(.gz) files, found {[os.path.basename(f) for f in files]}")
    return formats.pop()


def load_feature_config(data_dir: str) -> FeatureConfig:
    """DIR/feature_config.json, or the synthetic world's features when the file is absent."""
    path = os.path.join(data_dir, FEATURE_CONFIG_FILENAME)
    if not os.path.exists(path):
        return WORLD_FEATURES
    try:
        return FeatureConfig.load(path)
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{path}: {error}") from error


def count_domains(data_dir: str) -> Dict[int, int]:
    """Rows per ``domain_id`` value in the logs ({} if the column is missing or not integer)."""
    fmt = detect_format(data_dir)
    counts: Dict[int, int] = collections.Counter()
    if fmt == CSV:
        import pandas as pd

        for path in log_files(data_dir):
            header = pd.read_csv(path, nrows=0).columns
            if DOMAIN_KEY not in header:
                return {}
            column = pd.read_csv(path, usecols=[DOMAIN_KEY])[DOMAIN_KEY]
            if not pd.api.types.is_integer_dtype(column):
                return {}
            counts.update(column.value_counts().to_dict())
        return {int(k): int(v) for k, v in counts.items()}

    import tensorflow as tf

    spec = {DOMAIN_KEY: tf.io.VarLenFeature(tf.int64)}
    for path in log_files(data_dir):
        compression = "GZIP" if path.endswith(".gz") else None
        dataset = tf.data.TFRecordDataset(path, compression_type=compression).batch(65536)
        try:
            for batch in dataset:
                values = tf.io.parse_example(batch, spec)[DOMAIN_KEY].values.numpy()
                counts.update(collections.Counter(values.tolist()))
        except tf.errors.InvalidArgumentError:  # domain_id of another type: the validator reports it
            return {}
    return {int(k): int(v) for k, v in counts.items()}
