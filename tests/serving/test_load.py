"""Bounded load test: many concurrent clients through the router into a batching model server for a
fixed time; zero errors, and exactly one exposure-log line per request."""
import json
import threading
import time

import pytest

from serving_test_data import candidates
from crocodile.serving.batching import BatchingOptions
from crocodile.serving.client import ScoringClient
from crocodile.serving.policy import CanaryPolicy

CLIENTS = 24
DURATION_S = 6.0


@pytest.mark.slow
def test_concurrent_clients_zero_errors_and_no_lost_log_lines(start_model_server, start_router, config_path,
                                                              tmp_path):
    # Queue sized for the client count: TF Serving answers UNAVAILABLE beyond it, which this test must not see.
    batching = BatchingOptions(max_batch_size=512, batch_timeout_micros=2000, num_batch_threads=2,
                               max_enqueued_batches=CLIENTS)
    backend, _ = start_model_server(config_path, batching=batching)
    log_path = tmp_path / "exposure.jsonl"
    policy = CanaryPolicy.from_dict({"experiment": "load", "salt": "s", "default_canary_share": 0.2})
    port, router = start_router(backend, policy, exposure_log=str(log_path))
    counts, errors = [0] * CLIENTS, []
    deadline = time.monotonic() + DURATION_S

    def client_loop(index):
        client = ScoringClient(f"127.0.0.1:{port}", timeout_s=30)
        k = 0
        while time.monotonic() < deadline:
            try:
                result = client.regress(k % 5, f"user-{index}-{k % 50}", candidates(1 + k % 20),
                                        context={"user_segment": "s", "user_region": "r"})
                assert len(result.scores) == 1 + k % 20 and result.arm in ("stable", "canary")
                counts[index] += 1
            except Exception as error:  # any failure is a test failure; keep counting the rest
                errors.append(repr(error))
            k += 1
        client.close()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = sum(counts)
    assert total > CLIENTS  # every client got answers
    router.flush()  # lines are written off the request path, within ~10 ms of the answer
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == total
    assert all(line["status"] == "OK" for line in lines)
    print(f"load test: {total} requests in {DURATION_S:.0f}s from {CLIENTS} clients")
