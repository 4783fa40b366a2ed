"""The trainer's budget follows the data: epochs over the training split, not a fixed step count."""
import tensorflow as tf

from crocodile.pipeline import configs
from crocodile.pipeline.trainer import count_records, training_budget


def test_epochs_over_the_training_split():
    # 200 rows, batch 2048: one (partial) batch per epoch, not 2,000 steps.
    assert training_budget(200, 50, 2048, 3) == (3, 1, 1)
    # 240,000 rows / 2048 = 117.19 -> 118 steps; 60,000 eval rows -> 30 batches.
    assert training_budget(240_000, 60_000, 2048, 5) == (5, 118, 30)
    assert training_budget(4096, 2048, 2048, 2) == (2, 2, 1)


def test_a_step_count_is_spread_over_the_epochs():
    assert training_budget(240_000, 60_000, 2048, 3, train_steps=600) == (3, 200, 30)
    assert training_budget(240_000, 60_000, 2048, 3, train_steps=2, eval_steps=10) == (2, 1, 10)


def test_count_records_reads_gzipped_splits(tmp_path):
    for name, n in (("a", 3), ("b", 1234)):
        with tf.io.TFRecordWriter(str(tmp_path / f"{name}.gz"), options="GZIP") as writer:
            for i in range(n):
                writer.write(b"x" * (i % 7))
    assert count_records([str(tmp_path / "*.gz")]) == 1237
    assert count_records([str(tmp_path / "none-*")]) == 0


def test_direct_runner_is_sized_to_the_machine_and_the_rows():
    in_process = configs.IN_PROCESS_RUNNER_ARGS
    assert configs.direct_runner_args(10_000_000, cpus=1) == in_process
    assert configs.direct_runner_args(300_000, cpus=2) == in_process  # the demo's logs
    assert configs.direct_runner_args(200, cpus=64) == in_process
    assert configs.direct_runner_args(1_000_000, cpus=2) == (
        "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert configs.direct_runner_args(5_000_000, cpus=8) == (
        "--direct_running_mode=multi_processing", "--direct_num_workers=8")
    assert configs.direct_runner_args(None, cpus=8)[0] == "--direct_running_mode=multi_processing"
