"""`model.network` is the whole inference path and nothing else: saved with
tf.saved_model.save and reloaded it predicts the same, and none of its variables is
training-only (optimizer slots, the covariance loss, metrics)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from crocodile.model.features import WORLD_FEATURES
from crocodile.model.registry import MODEL_NAMES, build_model
from crocodile.model.training import compile_model, resolve

TRAINING_ONLY_MARKERS = ("optimizer", "adam", "/m/", "/v/", "iteration", "auc", "true_", "false_",
                         "disentangle", "bce", "cov", "metric", "total", "count")


def _training_only(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in TRAINING_ONLY_MARKERS)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_saved_network_predicts_the_same_and_holds_no_training_only_state(name, toy_data, vocab_sizes,
                                                                          tiny_hparams, tmp_path):
    features, labels = toy_data
    batch = ({k: v[:256] for k, v in features.items()}, labels[:256])
    model = build_model(name, WORLD_FEATURES, vocab_sizes, tiny_hparams)
    if model.training_data_columns:      # EDDA: alignment pairs from the training rows
        model.prepare_training_data({**batch[0], "click": batch[1]})
    compile_model(model, resolve(name, tiny_hparams))
    model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(128), epochs=1, verbose=0)
    assert model.optimizer.variables and model.metrics       # the outer model has both
    expected = model.network(batch[0], training=False)

    export_dir = os.path.join(tmp_path, name)
    tf.saved_model.save(model.network, export_dir)
    loaded = tf.saved_model.load(export_dir)
    got = loaded(batch[0], training=False)
    for key in ("probability", "logit"):
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-6)

    loaded_names = [v.name for v in loaded.variables]
    assert loaded_names and not [n for n in loaded_names if _training_only(n)]
    assert len(loaded.variables) == len(model.network.variables)
    checkpoint_keys = [key for key, _ in tf.train.list_variables(os.path.join(export_dir, "variables", "variables"))]
    assert not [k for k in checkpoint_keys if _training_only(k.replace("_CHECKPOINTABLE_OBJECT_GRAPH", ""))]
    # The outer model's training-only objects really carry such names (the check can fail).
    outer_names = [v.name for v in model.optimizer.variables] + [v.name for m in model.metrics for v in m.variables]
    assert all(_training_only(n) for n in outer_names)
