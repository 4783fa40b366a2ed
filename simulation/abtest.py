"""The simulated online A/B test: world traffic, ranking by the arm's model, true clicks and GMV.

One traffic and policy code path (`simulate`) with two scorers:
- `LiveScorer`: every request goes through the canary router over gRPC
  (crocodile.serving.client.ScoringClient.regress); the arm comes from the router's trailing
  metadata. A few thousand requests: checks routing, sample ratio and exposure logging.
- `OfflineScorer`: the two SavedModels' `serving_default` in-process, thousands of requests
  per model call, with the router's own assignment function
  (crocodile.serving.policy.CanaryPolicy.assign_many). Millions of impressions.

Per request: the world draws who arrives and in which domain (traffic shares, user activity)
and a candidate set from that domain's pool; the arm's model scores the candidates; the top
`slate_size` are shown; clicks are drawn from the world's TRUE click probability (position
examination included), purchases from P(purchase | click), GMV = price of each purchase.

Oracle lift: when both models' scores are known for every request (offline always; live with
in-process `oracle_models`), the expected clicks and GMV of the list EACH model would have
shown are summed exactly from the true probabilities (no sampling), over the same traffic.
That is the true lift the estimates are judged against.

Requests arrive as a Poisson process over the world's `days` (sorted uniform times), so the
report can plot the cumulative lift over simulated time.
"""
import dataclasses
import os
from typing import Dict, Optional

import numpy as np

from crocodile.errors import UserError
from crocodile.model.features import DOMAIN_KEY
from crocodile.simulation import stats

REQUESTS_PER_CHUNK = 2048       # requests scored per model call (times candidates per request)
PRE_PERIOD_SEED_OFFSET = 1_000_003  # the pre-period's traffic seed is the run's seed plus this
SECONDS_PER_DAY = 86400


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


def policy_canary_shares(policy, num_domains: int) -> np.ndarray:
    """The canary share of each domain from a CanaryPolicy; NaN for all without a policy."""
    if policy is None:
        return np.full(num_domains, np.nan)
    return np.array([policy.share_for(d) for d in range(num_domains)])


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
    """Every request through the router over gRPC; the arm from its trailing metadata."""

    def __init__(self, world, target: str, oracle_models: Optional[ModelPair] = None):
        from crocodile.serving.client import ScoringClient

        self._client = ScoringClient(target)
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
            result = self._client.regress(int(domain[row]), str(users["user_id"][row]), item_rows,
                                          context=context,
                                          request_id=None if request_ids is None else str(request_ids[row]))
            shown[row] = result.scores
            if result.arm not in ("stable", "canary"):
                raise RuntimeError(f"router answered without a valid arm in trailing metadata: {result.arm!r}")
            canary[row] = result.arm == "canary"
            version[row] = -1 if result.version is None else int(result.version)
        if self._oracle is None:
            return Scored(canary, shown, version=version)
        stable_scores, canary_scores = self._oracle.score(user, domain, candidates)
        return Scored(canary, shown, stable_scores, canary_scores, version)


@dataclasses.dataclass
class SimulationResult:
    """Per-request outcomes (chronological) and the exact oracle sums per domain."""

    user: np.ndarray
    domain: np.ndarray
    canary: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    purchases: np.ndarray
    gmv: np.ndarray
    timestamp: np.ndarray
    version: np.ndarray
    num_domains: int
    slate_size: int
    # [arm (0 stable, 1 canary), domain] expected clicks / GMV had EVERY request got that arm.
    oracle_clicks: Optional[np.ndarray] = None
    oracle_gmv: Optional[np.ndarray] = None
    oracle_requests: Optional[np.ndarray] = None  # requests per domain

    def cells(self, upto: Optional[int] = None) -> stats.Cells:
        n = self.user.size if upto is None else upto
        return stats.Cells.from_events(self.user[:n], self.domain[:n], self.canary[:n], self.impressions[:n],
                                       self.clicks[:n], self.purchases[:n], self.gmv[:n])


def _top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Candidates in descending score order, the first k (ties broken by candidate order)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(candidates, order, axis=1)


def _expected(world, prices, user, domain, shown):
    """Expected clicks and GMV per request of a shown list, from the true probabilities."""
    positions = np.arange(shown.shape[1])[None, :]
    p_click = world.click_probability(user[:, None], shown, domain[:, None], positions)
    p_buy = world.purchase_probability(user[:, None], shown, domain[:, None])
    price = prices[shown]
    return p_click.sum(axis=1), (p_click * p_buy * price).sum(axis=1), p_click, p_buy, price


def sample_traffic(world, rng, n: int, num_candidates: int):
    """n arriving requests: (user, domain, [n, num_candidates] candidate items from the domain pool)."""
    user, domain = world.sample_requests(rng, n)
    candidates = np.empty((n, num_candidates), np.int64)
    for d in np.unique(domain):
        rows = np.flatnonzero(domain == d)
        candidates[rows] = world.sample_candidates(rng, int(d), rows.size, num_candidates)
    return user, domain, candidates


def simulate(world, scorer, num_requests: int, seed: int = 0, slate_size: Optional[int] = None,
             candidates_per_request: Optional[int] = None, chunk: int = REQUESTS_PER_CHUNK,
             progress: bool = True) -> SimulationResult:
    """Runs `num_requests` requests of world traffic through `scorer` (the one code path)."""
    k = slate_size or world.config.slate_size
    num_candidates = candidates_per_request or world.config.candidates_per_request
    if k > num_candidates:
        raise UserError(f"slate size {k} exceeds candidates per request {num_candidates}")
    traffic_rng, outcome_rng, time_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    duration = world.config.days * SECONDS_PER_DAY
    timestamp = world.config.start_timestamp + np.sort(time_rng.random(num_requests)) * duration
    columns = {name: [] for name in ("user", "domain", "canary", "clicks", "purchases", "gmv", "version")}
    num_domains = world.num_domains
    prices = world.item_features(np.arange(world.num_items))["price"]  # GMV of one purchase, per item
    oracle_clicks, oracle_gmv = np.zeros((2, num_domains)), np.zeros((2, num_domains))
    have_oracle = True
    bar = _progress(num_requests * k, progress)
    for start in range(0, num_requests, chunk):
        n = min(chunk, num_requests - start)
        user, domain, candidates = sample_traffic(world, traffic_rng, n, num_candidates)
        request_ids = np.char.add(f"ab{seed}-", np.arange(start, start + n).astype(str))
        scored = scorer.score(user, domain, candidates, request_ids)
        shown = _top_k(scored.shown, candidates, k)
        _, _, p_click, p_buy, price = _expected(world, prices, user, domain, shown)
        clicked = outcome_rng.random(p_click.shape) < p_click
        bought = clicked & (outcome_rng.random(p_click.shape) < p_buy)
        for name, value in (("user", user), ("domain", domain), ("canary", scored.canary),
                            ("clicks", clicked.sum(axis=1)), ("purchases", bought.sum(axis=1)),
                            ("gmv", (bought * price).sum(axis=1)),
                            ("version", scored.version if scored.version is not None else np.full(n, -1))):
            columns[name].append(value)
        if scored.stable is None:
            have_oracle = False
        else:
            for arm, scores in enumerate((scored.stable, scored.canary_scores)):
                clicks_e, gmv_e, *_ = _expected(world, prices, user, domain, _top_k(scores, candidates, k))
                oracle_clicks[arm] += np.bincount(domain, clicks_e, minlength=num_domains)
                oracle_gmv[arm] += np.bincount(domain, gmv_e, minlength=num_domains)
        bar.update(n * k)
    bar.close()
    data = {name: np.concatenate(parts) for name, parts in columns.items()}
    return SimulationResult(
        user=data["user"], domain=data["domain"], canary=data["canary"].astype(bool),
        impressions=np.full(num_requests, k, np.int64), clicks=data["clicks"], purchases=data["purchases"],
        gmv=data["gmv"], timestamp=timestamp, version=data["version"], num_domains=num_domains, slate_size=k,
        oracle_clicks=oracle_clicks if have_oracle else None, oracle_gmv=oracle_gmv if have_oracle else None,
        oracle_requests=np.bincount(data["domain"], minlength=num_domains) if have_oracle else None)


def oracle_lifts(result: SimulationResult) -> Optional[Dict[str, Dict[str, float]]]:
    """True relative lifts per scope ('overall', 'domain d') and metric, from the oracle sums.

    Same traffic for both arms, so every ratio's denominator cancels: the CTR lift (and the
    clicks-per-user lift) is the ratio of expected clicks, the GMV-per-user lift that of GMV.
    """
    if result.oracle_clicks is None:
        return None
    out = {}
    scopes = [("overall", slice(None))] + [(f"domain {d}", d) for d in range(result.num_domains)]
    for scope, index in scopes:
        clicks = result.oracle_clicks[:, index].sum(axis=-1) if scope == "overall" else result.oracle_clicks[:, index]
        gmv = result.oracle_gmv[:, index].sum(axis=-1) if scope == "overall" else result.oracle_gmv[:, index]
        requests = result.oracle_requests.sum() if scope == "overall" else result.oracle_requests[index]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[scope] = {
                "ctr_stable": float(clicks[0] / (requests * result.slate_size)),
                "ctr_canary": float(clicks[1] / (requests * result.slate_size)),
                "ctr": float(clicks[1] / clicks[0] - 1),
                "clicks_per_user": float(clicks[1] / clicks[0] - 1),
                "gmv_per_user": float(gmv[1] / gmv[0] - 1),
            }
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="imp", unit_scale=True, disable=not enabled, desc="A/B impressions")
