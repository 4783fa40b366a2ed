"""Server-side request batching, as TF Serving's ``--enable_batching`` does it.

Mirrors the ``SharedBatchScheduler`` semantics that ``BatchingParameters`` configures
(tensorflow/core/kernels/batching_util/shared_batch_scheduler.h):

- one queue per servable and signature, all queues sharing ``num_batch_threads`` threads;
- a task (one request, N examples) joins the open batch if it fits in ``max_batch_size``,
  else a new batch opens; a task larger than ``max_batch_size`` is rejected with
  INVALID_ARGUMENT "Task size N is larger than maximum input batch size M";
- when ``max_enqueued_batches`` batches already wait, the task is rejected at once with
  UNAVAILABLE "The batch scheduling queue to which this task was submitted is full";
- a batch runs when it is full, when a newer batch has opened behind it, or when its first
  task has waited ``batch_timeout_micros``;
- a batch is padded to the next ``allowed_batch_sizes`` entry by repeating its first row,
  and an error in the run fails every task of the batch, as in TF Serving.

Large-batch splitting (``enable_large_batch_splitting``) is not implemented: the file may set
it, and then tasks are still limited to ``max_batch_size``.
"""
import collections
import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from crocodile.serving import status

Inputs = Dict[str, np.ndarray]

# Defaults of BasicBatchScheduler::Options / SharedBatchScheduler::QueueOptions, used for
# fields the batching parameters file leaves unset (as TF Serving does).
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ValueError("batching parameters: max_batch_size, num_batch_threads and "
                             "max_enqueued_batches must be >= 1")
        sizes = list(self.allowed_batch_sizes)
        if sizes and sizes != sorted(set(sizes)):
            raise ValueError("batching parameters: allowed_batch_sizes must be increasing")
        if sizes and sizes[-1] != self.max_batch_size:
            raise ValueError("batching parameters: the last allowed_batch_sizes entry must equal "
                             f"max_batch_size ({sizes[-1]} != {self.max_batch_size})")

    @classmethod
    def from_proto(cls, params) -> "BatchingOptions":
        def value(field, default):
            return getattr(params, field).value if params.HasField(field) else default
        return cls(
            max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
            batch_timeout_micros=value("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS),
            max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
            num_batch_threads=value("num_batch_threads", os.cpu_count() or 1),
            allowed_batch_sizes=tuple(params.allowed_batch_sizes),
        )


class _Task:
    __slots__ = ("inputs", "size", "done", "outputs", "error")

    def __init__(self, inputs: Inputs, size: int):
        self.inputs, self.size = inputs, size
        self.done = threading.Event()
        self.outputs: Optional[Inputs] = None
        self.error: Optional[BaseException] = None


class _Batch:
    def __init__(self, run: Callable[[Inputs], Inputs], opened_at: float):
        self.run, self.opened_at = run, opened_at
        self.tasks: List[_Task] = []
        self.size = 0


class BatchScheduler:
    """Shared batch threads over per-key queues. ``submit`` blocks until the batch ran."""

    def __init__(self, options: BatchingOptions):
        self.options = options
        self._queues: Dict[object, collections.deque] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, key, run: Callable[[Inputs], Inputs], inputs: Inputs, size: int) -> Inputs:
        options = self.options
        if size > options.max_batch_size:
            raise status.invalid_argument(
                f"Task size {size} is larger than maximum input batch size {options.max_batch_size}")
        task = _Task(inputs, size)
        with self._cond:
            queue = self._queues.setdefault(key, collections.deque())
            if not queue or queue[-1].size + size > options.max_batch_size:
                if len(queue) >= options.max_enqueued_batches:
                    raise status.unavailable("The batch scheduling queue to which this task was "
                                             "submitted is full")
                queue.append(_Batch(run, time.monotonic()))
            batch = queue[-1]
            batch.tasks.append(task)
            batch.size += size
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _next_ready_batch(self) -> Tuple[Optional[_Batch], Optional[float]]:
        """A batch ready to run, else the seconds until the earliest one times out."""
        timeout = self.options.batch_timeout_micros / 1e6
        now = time.monotonic()
        wait = None
        for queue in self._queues.values():
            if not queue:
                continue
            batch = queue[0]
            due = batch.opened_at + timeout
            if (batch.size >= self.options.max_batch_size or len(queue) > 1 or now >= due
                    or self._stopping):
                return queue.popleft(), None
            wait = due - now if wait is None else min(wait, due - now)
        return None, wait

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, wait = self._next_ready_batch()
                    if batch is not None:
                        break
                    if self._stopping:
                        return
                    self._cond.wait(wait)
            self._run(batch)

    def _padded_size(self, size: int) -> int:
        for allowed in self.options.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def _run(self, batch: _Batch) -> None:
        tasks = batch.tasks
        try:
            aliases = tasks[0].inputs.keys()
            merged = {alias: np.concatenate([np.asarray(t.inputs[alias]) for t in tasks])
                      for alias in aliases}
            padding = self._padded_size(batch.size) - batch.size
            if padding:
                merged = {alias: np.concatenate([value, np.repeat(value[:1], padding, axis=0)])
                          for alias, value in merged.items()}
            outputs = batch.run(merged)
            start = 0
            for task in tasks:
                task.outputs = {alias: value[start:start + task.size]
                                for alias, value in outputs.items()}
                start += task.size
        except BaseException as error:  # every task of a failed batch gets the error
            for task in tasks:
                task.error = error
        finally:
            for task in tasks:
                task.done.set()
