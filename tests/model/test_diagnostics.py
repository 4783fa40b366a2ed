"""Information abundance and expert statistics on hand-checked matrices."""
import numpy as np
import pytest

from crocodile.model.diagnostics import (cross_expert_covariance, expert_statistics, frequency_groups, information_abundance,
                                         embedding_diagnostics)
from crocodile.model.features import WORLD_FEATURES
from crocodile.model.registry import build_model


def test_information_abundance_of_known_spectra():
    assert information_abundance(np.eye(4)) == pytest.approx(4.0)                 # all singular values 1
    assert information_abundance(np.diag([4.0, 2.0, 1.0, 1.0])) == pytest.approx(2.0)
    rank_one = np.outer(np.arange(1, 6), np.arange(1, 4)).astype(float)
    assert information_abundance(rank_one) == pytest.approx(1.0)                  # full collapse
    assert np.isnan(information_abundance(np.zeros((3, 3))))


def test_expert_statistics_count_dead_units():
    outputs = np.zeros((4, 2, 3))
    outputs[:, 0, 0] = [1, 2, 3, 4]           # expert 0: one live unit of three
    outputs[:, 1, :] = 2.0                    # expert 1: all live, constant
    stats = expert_statistics(outputs)
    assert stats["dead_fraction"] == pytest.approx([2 / 3, 0.0])
    assert stats["mean"] == pytest.approx([2.5 / 3, 2.0])
    assert stats["std"][1] == pytest.approx(0.0)
    assert stats["unit_std"] == pytest.approx([np.std([1, 2, 3, 4]) / 3, 0.0])
    assert stats["information_abundance"][0] == pytest.approx(1.0)            # one live unit: rank 1
    assert stats["cross_expert_covariance"] == pytest.approx(0.0)             # expert 1 is constant


def test_full_batch_cross_expert_covariance_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    outputs = np.maximum(rng.normal(size=(500, 3, 4)), 0)
    outputs[:, 2] = outputs[:, 0] * 2.0                 # expert 2 copies expert 0: a large covariance
    n, d = 500, 4
    centred = outputs - outputs.mean(axis=0)
    expected = sum(np.abs(centred[:, p].T @ centred[:, q]).sum() / (n - 1)
                   for p, q in ((0, 1), (0, 2), (1, 2))) / d ** 2
    assert cross_expert_covariance(outputs) == pytest.approx(expected, rel=1e-12)
    assert cross_expert_covariance(outputs[:, :2]) < 0.1 * expected          # independent experts only


def test_frequency_groups_split_items_by_count():
    items = np.array([5] * 6 + [7] * 4 + [1] * 3 + [2] * 2 + [3] * 1 + [4] * 1)
    groups = frequency_groups(items)
    assert groups["head"].tolist() == [5, 7] and groups["tail"].tolist() == [3, 4]


def test_embedding_diagnostics_per_set_domain_and_frequency(toy_data, vocab_sizes, tiny_hparams):
    features, _ = toy_data
    model = build_model("crocodile", WORLD_FEATURES, vocab_sizes, tiny_hparams)
    model.network({k: v[:8] for k, v in features.items()})
    result = embedding_diagnostics(model.network, features)
    assert result["num_embedding_sets"] == 3
    assert set(result["overall"]) == set(WORLD_FEATURES.categorical)
    assert set(result["item_by_domain"]) == {"0", "1", "2", "3", "4"}
    table = model.network.embedding_tables["user_id"].numpy()
    per_set = [information_abundance(table[:, 4 * m:4 * (m + 1)]) for m in range(3)]
    assert result["overall"]["user_id"] == pytest.approx(np.mean(per_set))
