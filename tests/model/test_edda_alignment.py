"""EDDA's random-walk alignment pairs on small hand-built graphs (model/edda_alignment.py)."""
import numpy as np
import pytest

from crocodile.model.edda import pairs_from_training_arrays
from crocodile.model.edda_alignment import ITEM, USER, alignment_pairs, endpoint_counts, top_k_cross_domain
from crocodile.model.hparams import HParams

# Domain 0: u0-i0, u1-i1.  Domain 1: u0-i2, u2-i2, u1-i3, u3-i3.
# Anchors (users in both domains): u0, u1. Every walk from u0 or u2 (and i0, i2) can only end
# on u0 (or the non-anchor u2), every walk from u1 or u3 (i1, i3) only on u1 (or u3), so each
# count vector points along one anchor axis whatever the random draws: cosines are 1 or 0.
EDGES = [(0, 0, 0), (1, 1, 0), (0, 2, 1), (2, 2, 1), (1, 3, 1), (3, 3, 1)]


def _hand_graph():
    users, items, domains = (np.array(col, np.int64) for col in zip(*EDGES))
    return users, items, domains


def test_pairs_of_a_hand_built_graph():
    users, items, domains = _hand_graph()
    pairs = alignment_pairs(users, items, domains, walks_per_node=50, top_k=2, seed=3)
    # (id, domain) ends, smaller domain first. u0 in domain 0 is as close to u0 as to u2 of
    # domain 1 (both walk only to anchor u0); likewise u1 ~ u1, u3.
    assert pairs[USER].as_set() == {((0, 0), (0, 1)), ((0, 0), (2, 1)), ((1, 0), (1, 1)), ((1, 0), (3, 1))}
    np.testing.assert_allclose(pairs[USER].similarity, 1.0, rtol=1e-6)
    # Item walks (3 hops) end on users too: i0 ~ i2 (anchor u0), i1 ~ i3 (anchor u1).
    assert pairs[ITEM].as_set() == {((0, 0), (2, 1)), ((1, 0), (3, 1))}
    # top_k = 1: ties break by (domain, id), so u0@0 keeps u0@1 and u1@0 keeps u1@1; u2@1 and
    # u3@1 still bring their own best partner (u0@0, u1@0) from their end.
    top1 = alignment_pairs(users, items, domains, walks_per_node=50, top_k=1, seed=3)
    assert top1[USER].as_set() == {((0, 0), (0, 1)), ((0, 0), (2, 1)), ((1, 0), (1, 1)), ((1, 0), (3, 1))}


def test_no_overlapping_user_gives_no_pairs():
    users, items, domains = np.array([0, 1]), np.array([0, 1]), np.array([0, 1])
    pairs = alignment_pairs(users, items, domains, walks_per_node=5)
    assert len(pairs[USER]) == 0 and len(pairs[ITEM]) == 0


def test_cosine_and_top_k_on_hand_counts():
    counts = {0: np.array([[3.0, 4.0], [1.0, 0.0]], np.float32),
              1: np.array([[4.0, 3.0], [0.0, 2.0], [0.0, 0.0]], np.float32)}
    ids = {0: np.array([10, 11]), 1: np.array([20, 21, 22])}
    pairs = top_k_cross_domain(counts, ids, top_k=1)
    got = {(int(a), int(b)): float(s) for a, b, s in zip(pairs.id_a, pairs.id_b, pairs.similarity)}
    # cos([3,4],[4,3]) = 24/25; cos([1,0],[4,3]) = 4/5; cos([0,2],[3,4]) = 4/5 (> cos with [1,0] = 0);
    # node 22 reaches no anchor: no pair.
    assert got == pytest.approx({(10, 20): 0.96, (11, 20): 0.8, (10, 21): 0.8})


def test_endpoint_counts_count_only_anchors():
    ends = np.array([[0, 1, 1, 2], [2, 2, 2, 2]])
    anchor_index = np.array([0, -1, 1])              # local user 1 is not an anchor
    np.testing.assert_array_equal(endpoint_counts(ends, anchor_index, 2), [[1, 1], [0, 4]])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        alignment_pairs(np.array([0, 1]), np.array([0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="integers"):
        alignment_pairs(np.array([0.5]), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="hops"):
        alignment_pairs(*_hand_graph(), user_walk_length=3)


def test_pairs_from_training_arrays_drop_unclicked_and_oov_rows():
    users, items, domains = _hand_graph()
    # A clicked row through the OOV user id 9 (vocab 9 + 1 bucket) and an unclicked edge u2-i0
    # in domain 0 would both create new pairs if they were graph edges.
    arrays = {"user_id_xf": np.append(users, [9, 2]), "item_id_xf": np.append(items, [0, 0]),
              "domain_id_xf": np.append(domains, [0, 0]), "click": np.array([1] * len(users) + [1, 0])}
    hparams = HParams(edda_walks_per_node=50, edda_top_k=2, seed=3)
    pairs = pairs_from_training_arrays(arrays, hparams, {"user_id": 10, "item_id": 10}, num_oov_buckets=1)
    expected = alignment_pairs(users, items, domains, walks_per_node=50, top_k=2, seed=3)
    assert pairs[USER].as_set() == expected[USER].as_set()
    assert pairs[ITEM].as_set() == expected[ITEM].as_set()
    with_impressions = pairs_from_training_arrays(arrays, hparams.replace(edda_walk_edges="impression"),
                                                  {"user_id": 10, "item_id": 10}, num_oov_buckets=1)
    assert with_impressions[USER].as_set() != expected[USER].as_set()   # u2 now also in domain 0
