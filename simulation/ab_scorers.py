"""The arms' scorers of the A/B simulator: who answers a request, and with which scores.

Every scorer has `score(user, domain, candidates, request_ids, oracle_rows) -> Scored` for a
chunk of requests ([n] users and domains, [n, C] candidate items; `oracle_rows` marks the
requests whose other arm's scores the oracle needs), so crocodile.simulation.abtest runs
one traffic path whichever answers:
- `OfflineScorer`: the router's assignment function (CanaryPolicy.assign_many) and both
  SavedModels' `serving_default` in-process, thousands of requests per model call.
- `LiveScorer`: one Regress call per request to the canary router over gRPC
  (crocodile.serving.client.ScoringClient); the arm comes from the router's trailing metadata.
- `PrePeriodScorer`: the stable model for everyone (the pre-period behind CUPED), or
  `LoggingPolicyScorer`: the world's logging policy for everyone (no model evaluations).
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
    `stable`/`canary` are each model's scores where known (for the oracle): at least on the
    requests that arm served and on the oracle's sample; NaN elsewhere. None: not known."""

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

    def encode_pairs(self, pair: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Serialized Examples of (user * num_domains + domain, item) pairs. The user + domain
        bytes are joined once per run of equal `pair` values (sorted keys come in long runs)."""
        if pair.size == 0:
            return np.zeros(0, object)
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        runs = pair[starts]
        prefixes = self._users[runs // self._domains.size] + self._domains[runs % self._domains.size]
        return np.repeat(prefixes, np.diff(np.r_[starts, pair.size])) + self._items[item]

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


_NAN_BITS = np.float32(np.nan).view(np.uint32)
MAX_CACHED_SCORES = 40_000_000  # per model: a 160 MB table at most, or 480 MB of sorted keys and scores


class ScoreCache:
    """Scores already computed, keyed by (user, domain, item), for one model.

    Keys are int64 `(user * num_domains + domain) * num_items + item`. When every possible key
    fits in `max_entries`, scores sit in a table indexed by the key: each holds the score's bits
    XOR the bits of NaN, so the zero that fills a fresh table reads back as NaN (not scored)
    and a lookup is one gather (the zeroed pages are only allocated by the OS when first
    written, so a run touches what it scores; a model output of exactly that NaN would read
    as not scored and be scored again). Otherwise the keys are kept sorted (a large array plus a
    small recent one merged into it when it grows past a quarter of it, so the copying stays
    linear overall), and past `max_entries` nothing new is kept (the scores stay right; only
    reuse stops). A model's score of a triple does not depend on the request it came in, so a
    cached score is the score the model would give again.
    """

    def __init__(self, key_space: int, max_entries: Optional[int] = None):
        self.max_entries = MAX_CACHED_SCORES if max_entries is None else max_entries
        self.dense = key_space <= self.max_entries
        if self.dense:
            self._bits, self._size = np.zeros(key_space, np.uint32), 0
        else:
            self._parts = [(np.zeros(0, np.int64), np.zeros(0, np.float32)),
                           (np.zeros(0, np.int64), np.zeros(0, np.float32))]

    def __len__(self) -> int:
        return self._size if self.dense else sum(keys.size for keys, _ in self._parts)

    def lookup(self, keys: np.ndarray):
        """(scores, found) for any int64 `keys`; scores are NaN where not found."""
        if self.dense:
            bits = self._bits[keys]
            return (bits ^ _NAN_BITS).view(np.float32), bits != 0
        scores = np.full(keys.size, np.nan, np.float32)
        found = np.zeros(keys.size, bool)
        for part_keys, part_scores in self._parts:
            if part_keys.size:
                at = np.minimum(np.searchsorted(part_keys, keys), part_keys.size - 1)
                hit = part_keys[at] == keys
                scores[hit], found[hit] = part_scores[at[hit]], True
        return scores, found

    def add(self, keys: np.ndarray, scores: np.ndarray) -> None:
        """Adds sorted unique keys not yet cached."""
        if self.dense:
            self._bits[keys] = np.asarray(scores, np.float32).view(np.uint32) ^ _NAN_BITS
            self._size += keys.size
            return
        if len(self) + keys.size > self.max_entries:
            return
        big, recent = self._parts
        recent = _merge(recent, (keys, scores.astype(np.float32)))
        if recent[0].size > max(65536, big[0].size // 4):
            big, recent = _merge(big, recent), (np.zeros(0, np.int64), np.zeros(0, np.float32))
        self._parts = [big, recent]


def _merge(a, b):
    """Two (sorted keys, scores) pairs with disjoint keys -> one sorted pair."""
    at = np.searchsorted(a[0], b[0])
    return np.insert(a[0], at, b[0]), np.insert(a[1], at, b[1])


class CachedModel:
    """A SavedModel scorer that scores each distinct (user, domain, item) once per run."""

    def __init__(self, world, encoder: "ExampleEncoder", model: SavedModelScorer, cache: bool = True):
        self.path = model.path
        self._encoder, self._model = encoder, model
        self._num_domains, self._num_items = world.num_domains, world.num_items
        self._cache = ScoreCache(world.num_users * self._num_domains * self._num_items) if cache else None
        self.examples_scored = 0  # model evaluations so far (the cost the cache saves)

    def score_serialized(self, serialized: np.ndarray) -> np.ndarray:
        """The model on ready-made Examples (no reuse)."""
        self.examples_scored += serialized.size
        return self._model(serialized)

    def __call__(self, user: np.ndarray, domain: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores of [n, C] candidates of n requests."""
        if self._cache is None:
            return self.score_serialized(self._encoder.encode(user, domain, candidates)).reshape(candidates.shape)
        keys = ((user[:, None] * self._num_domains + domain[:, None]) * self._num_items + candidates).reshape(-1)
        scores, found = self._cache.lookup(keys)
        if not found.all():
            unseen = keys[~found]
            missing, inverse = np.unique(unseen, return_inverse=True)
            new = self._model(self._encoder.encode_pairs(missing // self._num_items, missing % self._num_items))
            scores[~found] = new[inverse]
            self._cache.add(missing, new)
            self.examples_scored += missing.size
        return scores.reshape(candidates.shape)


class ModelPair:
    """Both arms' models (one object when both name the same SavedModel: an A/A test).

    `cache` (default) scores each distinct (user, domain, item) once per model per run;
    without it every candidate slot is scored (the original path, kept for comparison).
    """

    def __init__(self, world, stable_path, canary_path, cache: bool = True):
        """`stable_path`/`canary_path`: SavedModel paths, or SavedModelScorers already loaded."""
        def loaded(model):
            return model if isinstance(model, SavedModelScorer) else SavedModelScorer(model)

        self.encoder = ExampleEncoder(world)
        self.stable = CachedModel(world, self.encoder, loaded(stable_path), cache)
        canary_dir = canary_path.path if isinstance(canary_path, SavedModelScorer) else canary_path
        same = os.path.realpath(resolve_saved_model(canary_dir)) == os.path.realpath(self.stable.path)
        self.canary = self.stable if same else CachedModel(world, self.encoder, loaded(canary_path), cache)
        self.cached = cache

    def score(self, user, domain, candidates):
        """Both models on every candidate. Without the cache the Examples are built once for both
        (exactly the original path)."""
        if not self.cached:
            serialized = self.encoder.encode(user, domain, candidates)
            stable = self.stable.score_serialized(serialized).reshape(candidates.shape)
            canary = (stable if self.canary is self.stable
                      else self.canary.score_serialized(serialized).reshape(candidates.shape))
            return stable, canary
        stable = self.stable(user, domain, candidates)
        canary = stable if self.canary is self.stable else self.canary(user, domain, candidates)
        return stable, canary

    def score_arms(self, user, domain, candidates, canary: np.ndarray, both: np.ndarray):
        """Each model on the requests it serves plus those in `both`; NaN elsewhere."""
        if self.canary is self.stable:
            scores = self.stable(user, domain, candidates)
            return scores, scores
        out = []
        for model, rows in ((self.stable, ~canary | both), (self.canary, canary | both)):
            scores = np.full(candidates.shape, np.nan, np.float32)
            rows = np.flatnonzero(rows)
            if rows.size:
                scores[rows] = model(user[rows], domain[rows], candidates[rows])
            out.append(scores)
        return out[0], out[1]

    @property
    def examples_scored(self) -> int:
        return self.stable.examples_scored + (0 if self.canary is self.stable else self.canary.examples_scored)


class OfflineScorer:
    """In-process arms: the router's assignment function and both SavedModels.

    `exhaustive` keeps the original path: both models score every candidate of every request,
    no cache (for the benchmark and the equivalence test). Otherwise each request is scored
    by its own arm's model, the other model scores only the oracle's sample (`oracle_rows`),
    and each distinct (user, domain, item) is scored once per model.
    """

    def __init__(self, world, policy, stable_path, canary_path, exhaustive: bool = False):
        self._policy = policy
        self._user_ids = world.user_features(np.arange(world.num_users))["user_id"]
        self._models = ModelPair(world, stable_path, canary_path, cache=not exhaustive)
        self._exhaustive = exhaustive
        # The arm is sticky per (user, domain): each pair is hashed once (-1: not yet).
        self._num_domains = world.num_domains
        self._arms = None if exhaustive else np.full(world.num_users * world.num_domains, -1, np.int8)

    def _assign(self, user: np.ndarray, domain: np.ndarray) -> np.ndarray:
        if self._arms is None:
            return np.asarray(self._policy.assign_many(domain, self._user_ids[user]), bool)
        pair = user * self._num_domains + domain
        new = np.unique(pair[self._arms[pair] < 0])
        if new.size:
            self._arms[new] = self._policy.assign_many(new % self._num_domains,
                                                       self._user_ids[new // self._num_domains])
        return self._arms[pair].astype(bool)

    @property
    def examples_scored(self) -> int:
        return self._models.examples_scored

    def pre_period(self) -> "PrePeriodScorer":
        """The same loaded stable model for everyone: traffic before the experiment (CUPED).
        It shares the cache, so the experiment reuses the pre-period's scores."""
        return PrePeriodScorer(self._models)

    def score(self, user, domain, candidates, request_ids=None, oracle_rows=None) -> Scored:
        canary = self._assign(user, domain)
        if self._exhaustive or oracle_rows is None:
            stable_scores, canary_scores = self._models.score(user, domain, candidates)
        else:
            stable_scores, canary_scores = self._models.score_arms(user, domain, candidates, canary, oracle_rows)
        shown = np.where(canary[:, None], canary_scores, stable_scores)
        return Scored(canary, shown, stable_scores, canary_scores)


class PrePeriodScorer:
    """Every request answered by the stable model: the pre-period whose per-user outcomes are
    the CUPED covariates (they cannot depend on the later assignment)."""

    def __init__(self, models: ModelPair):
        self._models = models

    def score(self, user, domain, candidates, request_ids=None, oracle_rows=None) -> Scored:
        return Scored(np.zeros(user.size, bool), self._models.stable(user, domain, candidates))


class LoggingPolicyScorer:
    """The world's logging policy for everyone: a CUPED pre-period that costs no model evaluation.

    The policy that wrote the training logs is the production ranking before the experiment;
    each user's pre-period clicks and GMV under it are as independent of the later assignment
    as under the stable model, and carry the same per-user activity and taste that CUPED uses.
    Score: popularity weight x log popularity + true click logit + N(0, noise^2), the score of
    crocodile.simulation.logs.logging_policy_slates (its 5% random-exposure slots are left out).
    """

    def __init__(self, world, seed: int = 0):
        self._world = world
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
        self._log_popularity = np.log(world.item_popularity)

    def score(self, user, domain, candidates, request_ids=None, oracle_rows=None) -> Scored:
        c = self._world.config
        scores = (c.policy_popularity_weight * self._log_popularity[candidates]
                  + self._world.click_logit(user[:, None], candidates, domain[:, None])
                  + c.policy_noise_sigma * self._rng.standard_normal(candidates.shape))
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

    def score(self, user, domain, candidates, request_ids=None, oracle_rows=None) -> Scored:
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
