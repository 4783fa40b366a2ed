"""SavedModels that rank with the world's own click model, perturbed: known-quality A/B arms.

`save_world_ranker(world, dir, noise)` writes a SavedModel with the production signatures
(`serving_default`: `examples` [N] serialized tf.Example -> `outputs` float32 [N]; `regress`:
`inputs` -> `outputs`). It computes the world's true click logit (crocodile.simulation.world,
`World.click_logit`) from the world's parameters after adding N(0, noise^2) to each of them,
so noise 0 ranks like the oracle and larger noise ranks worse. Two of them make an A/B test
whose winner is known in advance; tests, the benchmark and the demo use them when no trained
model is at hand. The ids are mapped back to world indices with lookup tables, so the model
reads exactly the raw features a real request carries.
"""
import numpy as np
import tensorflow as tf

from crocodile.model.features import DOMAIN_KEY, ITEM_KEY, USER_KEY, WORLD_FEATURES
from crocodile.serving.toy_ranker import ExampleScoringModule, feature_spec


class WorldRanker(ExampleScoringModule):
    def __init__(self, world, noise: float, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        arrays = world.arrays

        def noisy(name):
            value = np.asarray(arrays[name], np.float32)
            return tf.constant(value + noise * rng.standard_normal(value.shape).astype(np.float32))

        self._user_latent = noisy("user_latent")
        self._item_latent = noisy("item_latent")
        self._user_bias = noisy("user_bias")
        self._item_bias = noisy("item_bias")
        self._region_domain_bias = noisy("region_domain_bias")
        self._domain_alpha = tf.constant(np.asarray(arrays["domain_alpha"], np.float32))
        self._domain_sign = tf.constant(np.asarray(arrays["domain_sign"], np.float32))
        self._domain_shift = noisy("domain_shift")
        self._user_region = tf.constant(np.asarray(arrays["user_region"], np.int64))
        self._scale = float(world.config.affinity_scale) / float(np.sqrt(world.config.latent_dim))
        self._users = self._table(world.user_features(np.arange(world.num_users))[USER_KEY])
        self._items = self._table(world.item_features(np.arange(world.num_items))[ITEM_KEY])
        self._spec = feature_spec(WORLD_FEATURES)

    @staticmethod
    def _table(ids):
        init = tf.lookup.KeyValueTensorInitializer(tf.constant(ids.astype(bytes)),
                                                   tf.range(len(ids), dtype=tf.int64))
        return tf.lookup.StaticHashTable(init, default_value=0)

    def _probability(self, serialized):
        features = tf.io.parse_example(serialized, self._spec)
        user = self._users.lookup(features[USER_KEY])
        item = self._items.lookup(features[ITEM_KEY])
        domain = features[DOMAIN_KEY]
        user_vec = (tf.gather(self._user_latent, user) * tf.gather(self._domain_sign, domain)
                    + tf.gather(self._domain_shift, domain))
        affinity = tf.reduce_sum(user_vec * tf.gather(self._item_latent, item), axis=-1) * self._scale
        region = tf.gather(self._user_region, user)
        logit = (tf.gather(self._domain_alpha, domain) + tf.gather(self._user_bias, user)
                 + tf.gather(self._item_bias, item)
                 + tf.gather_nd(self._region_domain_bias, tf.stack([region, domain], axis=1)) + affinity)
        return tf.sigmoid(logit)


def save_world_ranker(world, export_dir: str, noise: float = 0.0, seed: int = 0) -> str:
    """Writes the SavedModel to `export_dir` (e.g. `<base>/crocodile/<version>`); returns it."""
    return WorldRanker(world, noise, seed).save(export_dir)
