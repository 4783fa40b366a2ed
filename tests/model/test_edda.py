"""EDDA: the alignment loss on known embeddings, the ablation switches, training with pairs
from the training arrays, and the loss-free export."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.edda import alignment_loss
from crocodile.model.edda_alignment import ITEM, USER, AlignmentPairs
from crocodile.model.features import WORLD_FEATURES
from crocodile.model.registry import build_model
from crocodile.model.training import compile_model, resolve


def test_alignment_loss_on_known_embeddings():
    a = tf.constant([[1.0, 0.0], [2.0, 0.0], [3.0, 4.0]])
    b = tf.constant([[0.0, 1.0], [5.0, 0.0], [-3.0, -4.0]])
    # Normalised: orthogonal -> 2, same direction -> 0, opposite -> 4; mean 2.
    assert float(alignment_loss(a, b)) == pytest.approx(2.0, rel=1e-6)
    assert float(alignment_loss(a[:0], b[:0])) == 0.0
    c = tf.constant([[1.0, 1.0]])
    d = tf.constant([[1.0, 0.0]])
    assert float(alignment_loss(c, d)) == pytest.approx(2.0 - 2.0 / math.sqrt(2.0), rel=1e-6)


def _pairs(id_a, dom_a, id_b, dom_b):
    arr = lambda x: np.array(x, np.int64)
    return AlignmentPairs(arr(id_a), arr(dom_a), arr(id_b), arr(dom_b), np.ones(len(id_a), np.float32))


def _model(vocab_sizes, tiny_hparams, **overrides):
    hparams = {**tiny_hparams, "embedding_l2": 0.0, **overrides}
    model = build_model("edda", WORLD_FEATURES, vocab_sizes, hparams)
    compile_model(model, resolve("edda", hparams))
    return model


def test_alignment_term_of_the_model_on_set_embeddings(toy_data, vocab_sizes, tiny_hparams):
    features, labels = toy_data
    batch = ({k: v[:64] for k, v in features.items()}, labels[:64])
    model = _model(vocab_sizes, tiny_hparams, edda_alignment_weight=0.5)
    model.network(batch[0])                                    # builds the tables
    e, s = tiny_hparams["embedding_dim"], WORLD_FEATURES.num_domains
    user_table = np.zeros((40, s * e), np.float32)
    user_table[3, 0 * e] = 1.0                                 # user 3 in domain 0: e_0
    user_table[5, 2 * e + 1] = 1.0                             # user 5 in domain 2: e_1 (orthogonal)
    user_table[7, 1 * e] = -2.0                                # user 7 in domain 1: -2 e_0 (opposite)
    model.network.intra.table_for("user_id").assign(user_table)
    item_table = np.zeros((40, s * e), np.float32)
    item_table[1, 0 * e + 2] = 1.0
    item_table[2, 4 * e + 2] = 3.0                             # same direction
    model.network.intra.table_for("item_id").assign(item_table)
    model.set_alignment_pairs({USER: _pairs([3, 3], [0, 0], [5, 7], [2, 1]), ITEM: _pairs([1], [0], [2], [4])})
    bce_only = float(model.compute_loss(batch, training=False))
    # Maps start as identities: user pairs give 2 and 4 (mean 3), the item pair 0.
    assert float(model.compute_loss(batch, training=True)) - bce_only == pytest.approx(0.5 * 3.0, rel=1e-5)
    # The maps are part of the computation: a map that rotates domain 2 onto e_0 aligns user 5.
    kernel = model.network.maps[USER].kernel.numpy()
    kernel[2] = np.eye(e)[[1, 0, 2, 3]]                        # swaps the first two axes
    model.network.maps[USER].kernel.assign(kernel)
    assert float(model.compute_loss(batch, training=True)) - float(model.compute_loss(batch, training=False)) \
        == pytest.approx(0.5 * (0.0 + 4.0) / 2, rel=1e-5)


def test_each_ablation_switch_changes_the_computed_function(toy_data, vocab_sizes, tiny_hparams):
    features, labels = toy_data
    batch = ({k: v[:128] for k, v in features.items()}, labels[:128])
    pairs = {USER: _pairs([1, 2], [0, 1], [3, 4], [2, 3]), ITEM: _pairs([5], [0], [6], [1])}

    tf.keras.utils.set_random_seed(3)
    full = _model(vocab_sizes, tiny_hparams)
    full.set_alignment_pairs(pairs)
    full.network(batch[0])
    no_align = _model(vocab_sizes, tiny_hparams, edda_alignment_weight=0.0)
    no_align.network(batch[0])
    no_align.set_weights(full.get_weights())
    no_align.set_alignment_pairs(pairs)                        # attached but weighted 0
    assert float(full.compute_loss(batch, training=True)) > float(no_align.compute_loss(batch, training=True))
    assert float(no_align.compute_loss(batch, training=True)) == pytest.approx(
        float(no_align.compute_loss(batch, training=False)), rel=1e-6)

    shared = _model(vocab_sizes, tiny_hparams, edda_intra_embeddings=False)
    out_shared = shared.network(batch[0])["probability"].numpy()
    assert shared.network.intra is None and "intra_embedding" not in " ".join(v.name for v in shared.network.variables)
    # Without intra tables the intra part reads the shared user/item embeddings: changing the
    # shared user table changes the intra part's input (and the prediction).
    table = shared.network.inputs_layer.embedding.table_for("user_id")
    table.assign(table + 1.0)
    assert not np.allclose(shared.network(batch[0])["probability"].numpy(), out_shared)


def test_prepare_training_data_attaches_pairs_from_the_training_rows(toy_data, vocab_sizes, tiny_hparams):
    """The full training path with pairs (loss falls, export) is in test_models_train.py and
    test_serving_path.py, which call prepare_training_data for every model that asks for it."""
    features, labels = toy_data
    model = _model(vocab_sizes, tiny_hparams, edda_walks_per_node=50, edda_top_k=3)
    assert set(model.training_data_columns) == {"user_id_xf", "item_id_xf", "domain_id_xf", "click"}
    model.prepare_training_data({**features, "click": labels})
    assert model.pair_counts[USER] > 0 and model.pair_counts[ITEM] > 0
    batch = ({k: v[:128] for k, v in features.items()}, labels[:128])
    tf.random.set_seed(0)
    assert float(model.compute_loss(batch, training=True)) > float(model.compute_loss(batch, training=False))
    off = _model(vocab_sizes, tiny_hparams, edda_alignment_weight=0.0)
    off.prepare_training_data({**features, "click": labels})
    assert off.pair_counts is None                            # no walks when alignment is off
