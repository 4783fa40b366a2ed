"""Fixtures for the pipeline tests: small canonical-schema logs written by hand.

``write_canonical_logs`` writes DIR/logs/part-00000.csv with the columns of
WORLD_FEATURES plus click, purchase, position, request_id and timestamp, and a click
probability that depends on the features (so a trained model beats a random one). The
bad-log tests mutate one column of these rows; the end-to-end test uses the world
generator's logs instead.
"""
import os

import numpy as np
import pytest

from crocodile.model.features import WORLD_FEATURES


def canonical_rows(num_rows: int, seed: int = 0, num_users: int = 60, num_items: int = 40) -> dict:
    """Columns of a small log with a learnable click signal (ids repeat >= 10 times)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, num_users, num_rows)
    items = rng.integers(0, num_items, num_rows)
    domains = rng.choice(WORLD_FEATURES.num_domains, num_rows, p=[0.5, 0.25, 0.15, 0.07, 0.03])
    user_taste = rng.normal(size=num_users)
    item_appeal = rng.normal(size=num_items)
    logit = -1.5 + 1.2 * user_taste[users] * np.sign(item_appeal[items]) + 0.3 * (domains == 1)
    clicks = (rng.random(num_rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return {
        "user_id": [f"u{u:05d}" for u in users],
        "item_id": [f"i{i:05d}" for i in items],
        "domain_id": domains.astype(np.int64),
        "user_segment": [f"seg{u % 4}" for u in users],
        "user_region": [f"reg{u % 3}" for u in users],
        "item_category": [f"cat{i % 5}" for i in items],
        "price": np.round(np.exp(rng.normal(2.0, 0.5, num_rows)), 2),
        "click": clicks,
        "purchase": (clicks * (rng.random(num_rows) < 0.1)).astype(np.int64),
        "position": rng.integers(0, 10, num_rows),
        "request_id": [f"r{r:07d}" for r in range(num_rows)],
        "timestamp": 1_700_000_000 + np.arange(num_rows),
    }


def write_canonical_logs(data_dir: str, columns: dict) -> str:
    """Writes ``columns`` as DIR/logs/part-00000.csv and the world feature config; returns DIR."""
    import pandas as pd

    os.makedirs(os.path.join(data_dir, "logs"), exist_ok=True)
    pd.DataFrame(columns).to_csv(os.path.join(data_dir, "logs", "part-00000.csv"), index=False)
    WORLD_FEATURES.save(os.path.join(data_dir, "feature_config.json"))
    return data_dir


@pytest.fixture
def canonical_logs(tmp_path):
    """A factory: ``canonical_logs(num_rows, mutate=None)`` -> data dir."""
    def make(num_rows: int = 400, mutate=None, name: str = "data"):
        columns = canonical_rows(num_rows)
        if mutate is not None:
            mutate(columns)
        return write_canonical_logs(str(tmp_path / name), columns)
    return make
