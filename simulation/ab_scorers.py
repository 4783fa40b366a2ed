"""The arms' scorers of the A/B simulator: who answers a request, and with which scores.

Every scorer has `score(user, domain, candidates, request_ids) -> Scored` for a chunk of
requests ([n] users and domains, [n, C] candidate items), so crocodile.simulation.abtest runs
one traffic path whichever answers:
- `OfflineScorer`: the router's assignment function (CanaryPolicy.assign_many) and both
  SavedModels' `serving_default` in-process, thousands of requests per model call.
- `LiveScorer`: one Regress call per request to the canary router over gRPC
  (crocodile.serving.client.ScoringClient); the arm comes from the router's trailing metadata.
- `PrePeriodScorer`: the stable model for everyone (the pre-period behind CUPED).
"""
import dataclasses
import os
from typing import Dict, Optional

import grpc
import numpy as np

from crocodile.errors import UserError
from crocodile.model.features import DOMAIN_KEY

LIVE_TIMEOUT_S = 10.0  # per Regress call through the router


@dataclasses.dataclass
class Scored:
    """Scores of one chunk of requests. `shown` ranks what the user sees (the arm's model);
    `stable`/`canary` are both models' scores when known (for the oracle)."""

    canary: np.ndarray                     # bool [n]: the arm that served each request
    shown: np.ndarray                      # [n, C]
    stable: Optional[np.ndarray] = None    # [n, C]
    canary_scores: Optional[np.ndarray] = None
    version: Optional[np.ndarray] = None   # model version per request (live), else None


class ExampleEncoder:
    """Serialized tf.Examples for (user, item, domain) triples at numpy speed.

    A serialized protobuf message followed by another one parses as their merge, and the
    map entries of `Features` are merged key by key. So each user's, item's and domain's
    features are serialized once, and the Example of a pair is the concatenation of three
    byte strings; tf.io.parse_example reads it exactly like one built field by field
    (tests/simulation/test_abtest.py checks this).
    """

    def __init__(self, world):
        from crocodile.serving.examples import make_example

        def serialize_rows(features: Dict[str, np.ndarray]) -> np.ndarray:
            keys = list(features)
            rows = zip(*(features[k].tolist() for k in keys))
            return np.array([make_example(dict(zip(keys, row))).SerializeToString() for row in rows],
                            dtype=object)

        self._users = serialize_rows(world.user_features(np.arange(world.num_users)))
        self._items = serialize_rows(world.item_features(np.arange(world.num_items)))
        self._domains = serialize_rows({DOMAIN_KEY: np.arange(world.num_domains)})

    def encode(self, user: np.ndarray, domain: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """[n, C] candidates of n requests -> n*C serialized Examples, row-major."""
        per_request = self._users[user] + self._domains[domain]
        return (per_request[:, None] + self._items[candidates]).reshape(-1)


def resolve_saved_model(path: str) -> str:
    """A SavedModel directory, or a base path whose newest integer version holds one."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for base in (path, os.path.join(path, "crocodile")):
        versions = [v for v in (os.listdir(base) if os.path.isdir(base) else []) if v.isdigit()]
        for version in sorted(versions, key=int, reverse=True):
            candidate = os.path.join(base, version)
            if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
                return candidate
    raise UserError(f"{path}: no saved_model.pb here or in an integer version folder under it")


class SavedModelScorer:
    """`serving_default` of one SavedModel on serialized Examples, in large batches."""

    def __init__(self, path: str, batch_size: int = 65536):
        import tensorflow as tf

        self.path = resolve_saved_model(path)
        self._tf = tf
        self._loaded = tf.saved_model.load(self.path)
        if "serving_default" not in self._loaded.signatures:
            raise UserError(f"{self.path}: SavedModel has no serving_default signature")
        self._fn = self._loaded.signatures["serving_default"]
        self._batch_size = batch_size

    def __call__(self, serialized: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, serialized.size, self._batch_size):
            batch = self._tf.constant(serialized[start:start + self._batch_size].tolist(), self._tf.string)
            out.append(self._fn(examples=batch)["outputs"].numpy().reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class ModelPair:
    """Both arms' models scoring the same candidates (the oracle needs both rankings)."""

    def __init__(self, world, stable_path: str, canary_path: str):
        self.encoder = ExampleEncoder(world)
        self.stable = SavedModelScorer(stable_path)
        same = os.path.realpath(resolve_saved_model(canary_path)) == os.path.realpath(self.stable.path)
        self.canary = self.stable if same else SavedModelScorer(canary_path)

    def score(self, user, domain, candidates):
        shape = candidates.shape
        serialized = self.encoder.encode(user, domain, candidates)
        stable = self.stable(serialized).reshape(shape)
        canary = stable if self.canary is self.stable else self.canary(serialized).reshape(shape)
        return stable, canary


class OfflineScorer:
    """In-process arms: the router's assignment function and both SavedModels."""

    def __init__(self, world, policy, stable_path: str, canary_path: str):
        self._policy = policy
        self._user_ids = world.user_features(np.arange(world.num_users))["user_id"]
        self._models = ModelPair(world, stable_path, canary_path)

    def pre_period(self) -> "PrePeriodScorer":
        """The same loaded stable model for everyone: traffic before the experiment (CUPED)."""
        return PrePeriodScorer(self._models)

    def score(self, user, domain, candidates, request_ids=None) -> Scored:
        canary = np.asarray(self._policy.assign_many(domain, self._user_ids[user]), bool)
        stable_scores, canary_scores = self._models.score(user, domain, candidates)
        shown = np.where(canary[:, None], canary_scores, stable_scores)
        return Scored(canary, shown, stable_scores, canary_scores)


class PrePeriodScorer:
    """Every request answered by the stable model: the pre-period whose per-user outcomes are
    the CUPED covariates (they cannot depend on the later assignment)."""

    def __init__(self, models: ModelPair):
        self._models = models

    def score(self, user, domain, candidates, request_ids=None) -> Scored:
        scores = self._models.stable(self._models.encoder.encode(user, domain, candidates)).reshape(candidates.shape)
        return Scored(np.zeros(user.size, bool), scores)


class LiveScorer:
    """Every request through the router over gRPC; the arm from its trailing metadata.

    A failed request stops the run with its gRPC status: a live A/B that silently dropped
    requests would bias the arms (the router logs every request, failed ones included).
    """

    def __init__(self, world, target: str, oracle_models: Optional[ModelPair] = None):
        from crocodile.serving.client import ScoringClient

        self._client = ScoringClient(target, timeout_s=LIVE_TIMEOUT_S)
        self._world = world
        self._oracle = oracle_models

    def score(self, user, domain, candidates, request_ids=None) -> Scored:
        users = self._world.user_features(user)
        shown = np.empty(candidates.shape, np.float64)
        canary = np.zeros(user.size, bool)
        version = np.full(user.size, -1, np.int64)
        for row in range(user.size):
            items = self._world.item_features(candidates[row])
            item_rows = [dict(zip(items, values)) for values in zip(*(items[k].tolist() for k in items))]
            context = {key: users[key][row].item() for key in users}
            try:
                result = self._client.regress(int(domain[row]), str(users["user_id"][row]), item_rows,
                                              context=context,
                                              request_id=None if request_ids is None else str(request_ids[row]))
            except grpc.RpcError as error:
                raise UserError(f"--target {self._client.target}: request {row} of this chunk failed with "
                                f"{error.code().name}: {error.details()}") from None
            shown[row] = result.scores
            if result.arm not in ("stable", "canary"):
                raise RuntimeError(f"router answered without a valid arm in trailing metadata: {result.arm!r}")
            canary[row] = result.arm == "canary"
            version[row] = -1 if result.version is None else int(result.version)
        if self._oracle is None:
            return Scored(canary, shown, version=version)
        stable_scores, canary_scores = self._oracle.score(user, domain, candidates)
        return Scored(canary, shown, stable_scores, canary_scores, version)
