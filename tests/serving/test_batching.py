"""BatchScheduler: batches form as BatchingParameters say, full queue is UNAVAILABLE, too-large
task INVALID_ARGUMENT, padding to allowed sizes, a failed batch fails all its tasks."""
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import text_format

from crocodile.serving import status
from crocodile.serving.batching import BatchingOptions, BatchScheduler
from crocodile.serving.tf_serving_protos import BatchingParameters


class RecordingModel:
    """A real (tiny) model: doubles its input; records the batch sizes it was run on."""

    def __init__(self, gate: threading.Event = None):
        self.batch_sizes = []
        self.gate = gate

    def __call__(self, inputs):
        if self.gate is not None:
            self.gate.wait(10)
        self.batch_sizes.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2.0}


def submit_concurrently(scheduler, model, sizes):
    results, errors = [None] * len(sizes), [None] * len(sizes)

    def one(index, size):
        x = np.arange(size, dtype=np.float32) + 100 * index
        try:
            results[index] = scheduler.submit("m", model, {"x": x}, size)["y"]
        except status.ServingError as error:
            errors[index] = error
    threads = [threading.Thread(target=one, args=(i, s)) for i, s in enumerate(sizes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_options_from_text_proto_with_tf_defaults():
    params = text_format.Parse("max_batch_size { value: 128 } allowed_batch_sizes: 32 allowed_batch_sizes: 128",
                               BatchingParameters())
    options = BatchingOptions.from_proto(params)
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches) == (128, 0, 10)
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        BatchingOptions(max_batch_size=100, allowed_batch_sizes=(32, 64))


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=64, batch_timeout_micros=200_000,
                                               num_batch_threads=1, max_enqueued_batches=10))
    model = RecordingModel()
    results, errors = submit_concurrently(scheduler, model, [4] * 12)
    scheduler.stop()
    assert errors == [None] * 12
    for index, result in enumerate(results):
        np.testing.assert_array_equal(result, (np.arange(4) + 100 * index) * 2.0)
    assert sum(model.batch_sizes) == 48 and len(model.batch_sizes) < 12  # some requests were batched together


def test_task_larger_than_max_batch_size_is_invalid_argument():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, num_batch_threads=1))
    with pytest.raises(status.ServingError) as error:
        scheduler.submit("m", RecordingModel(), {"x": np.zeros(9, np.float32)}, 9)
    scheduler.stop()
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.message == "Task size 9 is larger than maximum input batch size 8"


def test_full_queue_is_unavailable():
    gate = threading.Event()
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1,
                                               max_enqueued_batches=2))
    model = RecordingModel(gate)
    # Each task fills a batch; one runs (blocked on the gate), two wait, the rest find the queue full.
    holder = threading.Thread(target=submit_concurrently, args=(scheduler, model, [4]))
    holder.start()
    time.sleep(0.2)
    results = {}
    waiting = threading.Thread(target=lambda: results.update(zip("ab", submit_concurrently(scheduler, model, [4, 4, 4, 4]))))
    waiting.start()
    time.sleep(0.3)
    gate.set()
    waiting.join()
    holder.join()
    scheduler.stop()
    errors = [e for e in results["b"] if e is not None]
    assert len(errors) == 2 and all(e.code == grpc.StatusCode.UNAVAILABLE for e in errors)
    assert "batch scheduling queue to which this task was submitted is full" in errors[0].message


def test_padding_to_allowed_batch_sizes_and_errors_fail_the_whole_batch():
    scheduler = BatchScheduler(BatchingOptions(max_batch_size=16, allowed_batch_sizes=(4, 16), num_batch_threads=1))
    model = RecordingModel()
    result = scheduler.submit("m", model, {"x": np.ones(5, np.float32)}, 5)
    assert model.batch_sizes == [16] and result["y"].shape == (5,)

    def broken(inputs):
        raise status.invalid_argument("feature price has the wrong type")
    with pytest.raises(status.ServingError, match="price"):
        scheduler.submit("m", broken, {"x": np.ones(2, np.float32)}, 2)
    scheduler.stop()
