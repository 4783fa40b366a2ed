"""SavedModel warmup requests: TF Serving's file format, written by the exporter, replayed at load.

TF Serving (``--enable_model_warmup``, default true) reads
``<export_dir>/assets.extra/tf_serving_warmup_requests``: a TFRecord file of
``tensorflow.serving.PredictionLog`` protos, each replayed ``num_request_iterations`` times (1
unless ``--num_request_iterations_for_warmup`` > 0) against the version being loaded, before it
becomes AVAILABLE (servables/tensorflow/saved_model_warmup_util.cc, saved_model_warmup.cc).
A missing file is fine; a record that is no PredictionLog, more than 1,000 records, a file that
is no TFRecord (DATA_LOSS) or a failing request fails the load, with TF Serving's messages.
The first real request then finds the signature traced, the graph optimised and (on GPU) the
kernels autotuned.
"""
import os
from typing import Iterable

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, regression_pb2

from crocodile.serving import inference, status

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_NUM_RECORDS = 1000


def warmup_path(export_dir: str) -> str:
    return os.path.join(export_dir, ASSETS_EXTRA, WARMUP_FILE)


def prediction_log(request) -> "prediction_log_pb2.PredictionLog":
    """Wraps a PredictRequest or RegressionRequest the way TF Serving's warmup file holds it."""
    record = prediction_log_pb2.PredictionLog()
    if isinstance(request, predict_pb2.PredictRequest):
        record.predict_log.request.CopyFrom(request)
    elif isinstance(request, regression_pb2.RegressionRequest):
        record.regress_log.request.CopyFrom(request)
    else:
        raise TypeError(f"warmup requests are PredictRequest or RegressionRequest, not {type(request).__name__}")
    return record


def write_warmup_requests(export_dir: str, requests: Iterable) -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` under ``export_dir``; returns its path."""
    records = [prediction_log(r).SerializeToString() for r in requests]
    if not records or len(records) > MAX_NUM_RECORDS:
        raise ValueError(f"warmup needs 1..{MAX_NUM_RECORDS} requests, got {len(records)}")
    path = warmup_path(export_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def _replay_one(servable, record) -> None:
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        inference.predict(servable, record.predict_log.request)
    elif kind == "regress_log":
        inference.regress(servable, record.regress_log.request)
    elif kind in ("classify_log", "multi_inference_log"):
        raise status.ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                  f"{kind}: the embedded model server serves no Classify / MultiInference")
    elif kind is not None:
        number = record.DESCRIPTOR.fields_by_name[kind].number
        raise status.ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {number}")


def replay(servable, export_dir: str, iterations: int = 1) -> int:
    """Replays the warmup file of ``export_dir`` on ``servable``; returns the records read."""
    path = warmup_path(export_dir)
    if not tf.io.gfile.exists(path):
        return 0
    count = 0
    try:
        for data in tf.data.TFRecordDataset(path).as_numpy_iterator():
            record = prediction_log_pb2.PredictionLog()
            try:
                record.ParseFromString(data)
            except Exception:
                raise status.invalid_argument(f"Failed to parse warmup record: {data!r} from {path}") from None
            for _ in range(max(1, iterations)):
                _replay_one(servable, record)
            count += 1
            if count > MAX_NUM_RECORDS:
                raise status.invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_NUM_RECORDS}) at {path}")
    except tf.errors.DataLossError as error:
        raise status.ServingError(grpc.StatusCode.DATA_LOSS, f"{status.first_paragraph(error.message)}. "
                                  "Please verify your warmup data is in TFRecord format.") from None
    return count


def load_and_warm_up(name: str, version: int, export_dir: str, iterations: int = 1):
    """A loader for ServerCore: loads the SavedModel, then replays its warmup requests."""
    from crocodile.serving.servable import LoadedVersion
    servable = LoadedVersion(name, version, export_dir)
    replay(servable, export_dir, iterations)
    return servable
