"""Impression logs from the world's logging policy, generated in fixed-size chunks.

The logging policy is what production ran before any model: per request it draws
``candidates_per_request`` items from the domain's pool (popularity-weighted), scores them
with ``policy_popularity_weight * log(popularity) + true logit + N(0, policy_noise_sigma^2)``
(a popularity ranker with noisy relevance), and shows the top ``slate_size`` in score
order, position 0 first. Each slot is then, with probability ``random_exposure_share``,
given to a uniformly random item of the pool instead (KuaiRand's random exposure); those
rows are marked ``is_random_exposure`` in the ground truth.

Chunks have a fixed number of requests and their own random stream
(``SeedSequence([seed, 2, chunk_index])``), so the output depends only on the world, the
seed and the number of impressions, never on memory or sharding.
"""
from typing import Dict, Iterator, Tuple

import numpy as np

from crocodile.model import features
from crocodile.simulation.world import World

CHUNK_REQUESTS = 20000
SECONDS_PER_DAY = 86400

LOG_COLUMNS = (
    features.REQUEST_ID_KEY, features.TIMESTAMP_KEY, features.USER_KEY, features.ITEM_KEY,
    features.DOMAIN_KEY, features.POSITION_KEY, "user_segment", "user_region", "item_category",
    features.PRICE_KEY, features.LABEL_KEY, features.PURCHASE_KEY,
)
GROUND_TRUTH_COLUMNS = (
    features.REQUEST_ID_KEY, features.POSITION_KEY, "p_click", "p_relevance",
    "p_purchase_given_click", "is_random_exposure",
)


def logging_policy_slates(world: World, rng: np.random.Generator, user: np.ndarray, domain: int
                          ) -> Tuple[np.ndarray, np.ndarray]:
    """Slates for requests of one domain: (items (n, slate_size), is_random_exposure (n, slate_size))."""
    c = world.config
    n = len(user)
    candidates = world.sample_candidates(rng, domain, n, c.candidates_per_request)
    score = (c.policy_popularity_weight * np.log(world._item_popularity[candidates])
             + world.click_logit(user[:, None], candidates, domain)
             + c.policy_noise_sigma * rng.standard_normal(candidates.shape))
    top = np.argpartition(-score, c.slate_size - 1, axis=1)[:, : c.slate_size]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(score, top, axis=1), axis=1), axis=1)
    slates = np.take_along_axis(candidates, top, axis=1)
    is_random = rng.random(slates.shape) < c.random_exposure_share
    pool = world.domain_candidates(domain)
    slates[is_random] = pool[rng.integers(0, len(pool), int(is_random.sum()))]
    return slates, is_random


def calibrate_domain_alpha(world: World, requests_per_domain: int) -> np.ndarray:
    """alpha_d such that the logging policy's expected CTR in domain d is ``domain_ctr[d]``.

    The policy's ranking does not depend on alpha_d (it shifts every candidate of a domain
    equally), so one simulated sample of shown impressions per domain fixes the rest of the
    logit; alpha_d then solves mean(exam(k) * sigmoid(alpha_d + z)) = target by bisection.
    """
    rng = np.random.default_rng(np.random.SeedSequence([world.config.seed, 1]))
    alphas = np.zeros(world.num_domains)
    for d in range(world.num_domains):
        user = world.sample_users(rng, d, requests_per_domain)
        slates, _ = logging_policy_slates(world, rng, user, d)
        rest = world.click_logit(user[:, None], slates, d) - world._domain_alpha[d]
        exam = world.examination_probability(np.arange(world.config.slate_size))[None, :]
        low, high = -20.0, 10.0
        for _ in range(60):
            mid = 0.5 * (low + high)
            if np.mean(exam / (1.0 + np.exp(-(mid + rest)))) < world.config.domain_ctr[d]:
                low = mid
            else:
                high = mid
        alphas[d] = 0.5 * (low + high)
    return alphas


def generate_chunk(world: World, rng: np.random.Generator, first_request: int, n_requests: int,
                   total_requests: int) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Logs and ground truth for requests first_request .. first_request + n_requests - 1."""
    c = world.config
    slate = c.slate_size
    user, domain = world.sample_requests(rng, n_requests)
    items = np.empty((n_requests, slate), dtype=np.int64)
    is_random = np.empty((n_requests, slate), dtype=bool)
    for d in range(world.num_domains):
        rows = np.flatnonzero(domain == d)
        if len(rows):
            items[rows], is_random[rows] = logging_policy_slates(world, rng, user[rows], d)
    position = np.broadcast_to(np.arange(slate), (n_requests, slate))
    users = np.repeat(user, slate)
    domains = np.repeat(domain, slate)
    flat_items, flat_position = items.ravel(), position.ravel()
    p_relevance = world.relevance_probability(users, flat_items, domains)
    p_click = world.examination_probability(flat_position) * p_relevance
    p_purchase = world.purchase_probability(users, flat_items, domains)
    click = rng.random(len(p_click)) < p_click
    purchase = click & (rng.random(len(p_click)) < p_purchase)

    request_index = np.arange(first_request, first_request + n_requests)
    # Requests spread evenly over `days`, with jitter inside each request's time slot.
    span = c.days * SECONDS_PER_DAY
    timestamp = c.start_timestamp + ((request_index + rng.random(n_requests)) * span / total_requests).astype(np.int64)
    request_id = np.repeat(np.char.add("r", np.char.zfill(request_index.astype(str), 10)), slate)
    user_features, item_features = world.user_features(users), world.item_features(flat_items)
    logs = {
        features.REQUEST_ID_KEY: request_id,
        features.TIMESTAMP_KEY: np.repeat(timestamp, slate),
        features.USER_KEY: user_features["user_id"],
        features.ITEM_KEY: item_features["item_id"],
        features.DOMAIN_KEY: domains,
        features.POSITION_KEY: flat_position.astype(np.int64),
        "user_segment": user_features["user_segment"],
        "user_region": user_features["user_region"],
        "item_category": item_features["item_category"],
        features.PRICE_KEY: np.round(item_features["price"], 2),
        features.LABEL_KEY: click.astype(np.int64),
        features.PURCHASE_KEY: purchase.astype(np.int64),
    }
    truth = {
        features.REQUEST_ID_KEY: request_id,
        features.POSITION_KEY: flat_position.astype(np.int64),
        # float32 keeps the ground-truth files small (7 significant digits are plenty).
        "p_click": p_click.astype(np.float32),
        "p_relevance": p_relevance.astype(np.float32),
        "p_purchase_given_click": p_purchase.astype(np.float32),
        "is_random_exposure": is_random.ravel().astype(np.int64),
    }
    return logs, truth


def iterate_chunks(world: World, num_impressions: int, seed: int, chunk_requests: int = CHUNK_REQUESTS
                   ) -> Iterator[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
    """Yields (logs, ground truth) column dicts holding exactly num_impressions rows in all."""
    slate = world.config.slate_size
    total_requests = -(-num_impressions // slate)
    rows_left = num_impressions
    for chunk_index, first in enumerate(range(0, total_requests, chunk_requests)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, chunk_index]))
        n = min(chunk_requests, total_requests - first)
        logs, truth = generate_chunk(world, rng, first, n, total_requests)
        if n * slate > rows_left:  # the last request may be cut short
            logs = {k: v[:rows_left] for k, v in logs.items()}
            truth = {k: v[:rows_left] for k, v in truth.items()}
        rows_left -= len(logs[features.LABEL_KEY])
        yield logs, truth
