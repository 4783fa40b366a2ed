"""The synthetic multi-domain world: users, items, domains and the true click model.

Everything is drawn once from ``WorldConfig.seed`` and kept as arrays, so the world is
deterministic and its true click and purchase probabilities are known for any
(user, item, domain, position). The same world writes the training logs
(crocodile.simulation.logs) and judges the A/B traffic (crocodile.simulation.abtest).

Click model (a position-based model, DESIGN section 7):

    P(click | u, i, d, k) = exam(k) * sigmoid(alpha_d + b_u + c_i + r[region_u, d]
                                              + s * <m_d * e_u + delta_d, v_i> / sqrt(D))
    exam(k) = (k + 1) ** -examination_eta                      (k = 0-based position)

``e_u`` mixes the centre of the user's segment and region with noise (so the profile
fields carry signal), ``v_i`` mixes its category centre with noise, ``m_d`` flips the
sign of the conflict dimensions in some domains (preference conflict), ``delta_d`` shifts
the preferences per domain, and ``alpha_d`` is calibrated at creation so that the
logging policy's traffic in domain d has the configured CTR.

Purchase given click: sigmoid(purchase_logit + p_u + 0.3 c_i - price_sensitivity *
(log price - price_log_mean) + purchase_affinity_scale * <t_u, v_i> / sqrt(D) + g_d), where
``t_u`` is the user's purchase taste (correlated with ``e_u`` by purchase_taste_correlation)
and ``g_d`` a per-domain purchase intercept: with both on, GMV carries information of its
own rather than being CTR times the price mix.

Where the domain structure sits is configurable: ``conflict_codes[d]`` says which conflict
dimensions flip in domain d, and ``reference_domain`` is the one domain without a shift
(-1: every domain is shifted). The named presets in crocodile.simulation.presets fix these
choices before any model is compared.
"""
import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np

from crocodile.errors import UserError
from crocodile.simulation import sampling

CONFIG_FILE = "world_config.json"
ARRAYS_FILE = "world_arrays.npz"
CALIBRATION_REQUESTS_PER_DOMAIN = 10000  # logged requests simulated per domain to calibrate alpha_d


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    num_users: int = 10000
    num_items: int = 2000
    num_domains: int = 5
    # KuaiRand's five largest tabs hold about 66/21/8/3.5/1.6 % of the impressions.
    domain_shares: Tuple[float, ...] = (0.66, 0.21, 0.08, 0.035, 0.015)
    # CTR of the logging policy's traffic per domain (alpha_d is calibrated to it).
    domain_ctr: Tuple[float, ...] = (0.045, 0.035, 0.06, 0.03, 0.075)
    # Share of the item catalogue eligible in each domain (domain 0 sees everything).
    domain_pool_fraction: Tuple[float, ...] = (1.0, 0.6, 0.5, 0.4, 0.3)
    latent_dim: int = 8
    # Dimensions 0..num_conflict_dims-1 flip sign in domain d when bit j of d is set
    # (with 3: domain 1 flips dim 0, 2 flips dim 1, 3 flips dims 0 and 1, 4 flips dim 2).
    num_conflict_dims: int = 3
    # Per domain, bit j set = conflict dim j flips there; None = the domain index itself (above).
    conflict_codes: Optional[Tuple[int, ...]] = None
    domain_shift_sigma: float = 0.5     # per-domain additive preference shift delta_d
    reference_domain: int = 0           # the domain without a shift; -1 = every domain is shifted
    affinity_scale: float = 1.0         # s: weight of the user x item latent interaction
    user_bias_sigma: float = 0.5        # b_u
    item_bias_sigma: float = 0.4        # noise part of c_i
    popularity_quality: float = 0.3     # part of c_i explained by (standardised) log popularity
    region_domain_sigma: float = 0.3    # r[region, d]
    num_segments: int = 8
    num_regions: int = 6
    num_categories: int = 20
    segment_weight: float = 0.6         # share of e_u's scale from the segment centre
    region_weight: float = 0.3          # ... and from the region centre (rest is noise)
    category_weight: float = 0.7        # share of v_i's scale from the category centre
    zipf_exponent: float = 1.0          # item popularity ~ rank ** -zipf_exponent
    activity_sigma: float = 1.0         # user activity ~ lognormal(0, sigma): impressions per user
    user_domain_sigma: float = 0.7      # per-user taste for each domain (lognormal multiplier)
    price_log_mean: float = 3.5         # log price ~ N(price_log_mean, price_log_sigma^2)
    price_log_sigma: float = 0.9
    purchase_logit: float = -2.2        # about 10 % of clicks buy at the mean price
    purchase_user_sigma: float = 0.5
    price_sensitivity: float = 0.8
    purchase_affinity_scale: float = 0.0    # weight of <t_u, v_i> / sqrt(D) in the purchase logit
    purchase_taste_correlation: float = 0.5  # corr(t_u, e_u) per latent dimension
    purchase_domain_sigma: float = 0.0      # g_d ~ N(0, sigma^2): per-domain purchase intercept
    examination_eta: float = 0.7
    # Logging policy: candidates per request, slate size, and how it scores.
    candidates_per_request: int = 30
    slate_size: int = 10
    policy_popularity_weight: float = 0.5
    policy_noise_sigma: float = 1.0     # noise on the true logit in the logging score
    random_exposure_share: float = 0.05  # share of slots given to a uniformly random pool item
    start_timestamp: int = 1704067200   # 2024-01-01 00:00 UTC
    days: int = 14
    preset: str = ""                    # the named preset this config came from, if any (recorded only)

    def __post_init__(self):
        if self.conflict_codes is not None:
            object.__setattr__(self, "conflict_codes", tuple(int(v) for v in self.conflict_codes))
            if len(self.conflict_codes) != self.num_domains:
                raise UserError(f"world config: conflict_codes has {len(self.conflict_codes)} values, "
                                f"num_domains is {self.num_domains}")
            if not all(0 <= v < 2 ** self.num_conflict_dims for v in self.conflict_codes):
                raise UserError(f"world config: every conflict_codes value must lie in "
                                f"[0, {2 ** self.num_conflict_dims - 1}] (num_conflict_dims bits)")
        if not -1 <= self.reference_domain < self.num_domains:
            raise UserError(f"world config: reference_domain must be -1 or a domain in [0, {self.num_domains - 1}]")
        if not -1.0 <= self.purchase_taste_correlation <= 1.0:
            raise UserError("world config: purchase_taste_correlation must lie in [-1, 1]")
        for name in ("domain_shares", "domain_ctr", "domain_pool_fraction"):
            value = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, value)
            if len(value) != self.num_domains:
                raise UserError(f"world config: {name} has {len(value)} values, num_domains is {self.num_domains}")
        if abs(sum(self.domain_shares) - 1.0) > 0.02:
            raise UserError(f"world config: domain_shares sum to {sum(self.domain_shares):.3f}, not 1")
        if not all(0.0 < c < 0.5 for c in self.domain_ctr):
            raise UserError("world config: every domain_ctr must lie in (0, 0.5)")
        if not all(0.0 < f <= 1.0 for f in self.domain_pool_fraction):
            raise UserError("world config: every domain_pool_fraction must lie in (0, 1]")
        if self.num_users < 1 or self.num_items < self.candidates_per_request:
            raise UserError("world config: need num_users >= 1 and num_items >= candidates_per_request")
        if not 1 <= self.slate_size <= self.candidates_per_request:
            raise UserError("world config: need 1 <= slate_size <= candidates_per_request")
        if not 0.0 <= self.random_exposure_share <= 1.0:
            raise UserError("world config: random_exposure_share must lie in [0, 1]")
        if self.num_conflict_dims > self.latent_dim:
            raise UserError("world config: num_conflict_dims cannot exceed latent_dim")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WorldConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"world config: unknown keys {sorted(unknown)}")
        return cls(**data)


def domain_signs(num_domains: int, latent_dim: int, num_conflict_dims: int,
                 conflict_codes: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """m_d: +1/-1 per (domain, dim); conflict dim j flips in domain d when bit j of its code
    is set (the code is conflict_codes[d], or d itself when no codes are given)."""
    codes = range(num_domains) if conflict_codes is None else conflict_codes
    signs = np.ones((num_domains, latent_dim), dtype=np.float32)
    for d, code in enumerate(codes):
        for j in range(num_conflict_dims):
            if (code >> j) & 1:
                signs[d, j] = -1.0
    return signs


def _build_purchase_arrays(config: WorldConfig, user_latent: np.ndarray) -> Dict[str, np.ndarray]:
    """t_u and g_d, from their own random stream so the rest of the world is unchanged by them."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 3]))
    rho = config.purchase_taste_correlation
    noise = rng.standard_normal(user_latent.shape)
    taste = rho * user_latent / (user_latent.std() + 1e-12) + np.sqrt(1.0 - rho ** 2) * noise
    return {
        "user_purchase_taste": taste.astype(np.float32),
        "purchase_domain_bias": (config.purchase_domain_sigma * rng.standard_normal(config.num_domains)).astype(np.float32),
    }


def _build_arrays(config: WorldConfig) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0]))
    c, dim = config, config.latent_dim

    def mix(centres, idx, weight, other=None, other_weight=0.0):
        noise_weight = np.sqrt(max(1.0 - weight ** 2 - other_weight ** 2, 0.0))
        out = weight * centres[idx] + noise_weight * rng.standard_normal((len(idx), dim))
        if other is not None:
            out += other_weight * other
        return out.astype(np.float32)

    segment_centres = rng.standard_normal((c.num_segments, dim))
    region_centres = rng.standard_normal((c.num_regions, dim))
    category_centres = rng.standard_normal((c.num_categories, dim))
    # Mildly unequal segment/region/category sizes (choice left open: Zipf-like, exponent 0.5).
    def sizes(n):
        w = 1.0 / np.arange(1, n + 1) ** 0.5
        return w / w.sum()

    user_segment = rng.choice(c.num_segments, c.num_users, p=sizes(c.num_segments))
    user_region = rng.choice(c.num_regions, c.num_users, p=sizes(c.num_regions))
    user_latent = mix(segment_centres, user_segment, c.segment_weight,
                      region_centres[user_region], c.region_weight)
    item_category = rng.choice(c.num_categories, c.num_items, p=sizes(c.num_categories))
    item_latent = mix(category_centres, item_category, c.category_weight)

    # Zipf popularity over a random permutation of items (ids carry no popularity order).
    rank = rng.permutation(c.num_items) + 1
    popularity = rank.astype(np.float64) ** -c.zipf_exponent
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    item_bias = (c.popularity_quality * (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12)
                 + c.item_bias_sigma * rng.standard_normal(c.num_items))
    price = np.exp(c.price_log_mean + c.price_log_sigma * rng.standard_normal(c.num_items))

    activity = np.exp(c.activity_sigma * rng.standard_normal(c.num_users))
    user_domain_taste = np.exp(c.user_domain_sigma * rng.standard_normal((c.num_users, c.num_domains)))
    domain_shift = c.domain_shift_sigma * rng.standard_normal((c.num_domains, dim))
    if c.reference_domain >= 0:
        domain_shift[c.reference_domain] = 0.0
    pool_mask = np.zeros((c.num_domains, c.num_items), dtype=bool)
    for d, fraction in enumerate(c.domain_pool_fraction):
        size = max(c.candidates_per_request, int(round(fraction * c.num_items)))
        pool_mask[d, rng.choice(c.num_items, size, replace=False)] = True
    return {
        "user_segment": user_segment.astype(np.int32),
        "user_region": user_region.astype(np.int32),
        "user_latent": user_latent,
        "user_bias": (c.user_bias_sigma * rng.standard_normal(c.num_users)).astype(np.float32),
        "user_purchase_bias": (c.purchase_user_sigma * rng.standard_normal(c.num_users)).astype(np.float32),
        "user_activity": activity,
        "user_domain_taste": user_domain_taste,
        "item_category": item_category.astype(np.int32),
        "item_latent": item_latent,
        "item_bias": item_bias.astype(np.float32),
        "item_popularity": popularity,
        "item_price": price,
        "domain_sign": domain_signs(c.num_domains, dim, c.num_conflict_dims, c.conflict_codes),
        "domain_shift": domain_shift.astype(np.float32),
        "region_domain_bias": (c.region_domain_sigma * rng.standard_normal((c.num_regions, c.num_domains))).astype(np.float32),
        "domain_pool_mask": pool_mask,
        "domain_alpha": np.zeros(c.num_domains),
        **_build_purchase_arrays(c, user_latent),
    }


class World:
    """A seeded multi-domain world. Build with ``World.create(config)`` or ``World.load(dir)``."""

    def __init__(self, config: WorldConfig, arrays: Dict[str, np.ndarray]):
        self.config = config
        if "user_purchase_taste" not in arrays:  # a world saved before these arrays existed
            arrays = {**arrays, **_build_purchase_arrays(config, arrays["user_latent"])}
        self.arrays = arrays
        for key, value in arrays.items():
            setattr(self, "_" + key, value)
        self._pools = [np.flatnonzero(mask) for mask in self._domain_pool_mask]
        self._pool_inverse_cdfs = [sampling.InverseCdf(np.cumsum(self._item_popularity[p]) / self._item_popularity[p].sum())
                                   for p in self._pools]
        # P(user | domain) ∝ activity_u * taste_{u,d}: heavy-tailed impressions per user.
        weights = self._user_activity[:, None] * self._user_domain_taste
        self._user_cdfs = np.cumsum(weights / weights.sum(axis=0), axis=0).T.copy()
        self._share_cdf = np.cumsum(np.asarray(config.domain_shares) / sum(config.domain_shares))
        self._user_ids = np.array([f"u{i:06d}" for i in range(config.num_users)])
        self._item_ids = np.array([f"i{i:06d}" for i in range(config.num_items)])

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, config: WorldConfig) -> "World":
        world = cls(config, _build_arrays(config))
        from crocodile.simulation.logs import calibrate_domain_alpha  # logs imports world
        world._domain_alpha[:] = calibrate_domain_alpha(world, CALIBRATION_REQUESTS_PER_DOMAIN)
        return world

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)
        np.savez_compressed(os.path.join(directory, ARRAYS_FILE), **self.arrays)

    @classmethod
    def load(cls, directory: str) -> "World":
        config_path = os.path.join(directory, CONFIG_FILE)
        arrays_path = os.path.join(directory, ARRAYS_FILE)
        for path in (config_path, arrays_path):
            if not os.path.isfile(path):
                raise UserError(f"{path}: missing; not a world directory (written by `crocodile data generate`)")
        with open(config_path) as f:
            config = WorldConfig.from_dict(json.load(f))
        with np.load(arrays_path) as data:
            arrays = {key: data[key] for key in data.files}
        return cls(config, arrays)

    # ----------------------------------------------------------------- sizes & features
    @property
    def num_users(self) -> int:
        return self.config.num_users

    @property
    def num_items(self) -> int:
        return self.config.num_items

    @property
    def num_domains(self) -> int:
        return self.config.num_domains

    @property
    def domain_alpha(self) -> np.ndarray:
        return self._domain_alpha.copy()

    @property
    def item_popularity(self) -> np.ndarray:
        return self._item_popularity.copy()

    def user_features(self, user_idx) -> Dict[str, np.ndarray]:
        user_idx = np.asarray(user_idx)
        return {
            "user_id": self._user_ids[user_idx],
            "user_segment": np.char.add("seg", self._user_segment[user_idx].astype(str)),
            "user_region": np.char.add("reg", self._user_region[user_idx].astype(str)),
        }

    def item_features(self, item_idx) -> Dict[str, np.ndarray]:
        item_idx = np.asarray(item_idx)
        return {
            "item_id": self._item_ids[item_idx],
            "item_category": np.char.add("cat", self._item_category[item_idx].astype(str)),
            "price": self._item_price[item_idx],
        }

    # ----------------------------------------------------------------- traffic
    def domain_candidates(self, domain: int) -> np.ndarray:
        return self._pools[int(domain)].copy()

    def sample_requests(self, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """n arriving requests: domain ~ traffic shares, then user ~ activity x domain taste."""
        domain = np.searchsorted(self._share_cdf, rng.random(n) * self._share_cdf[-1], side="right")
        domain = np.minimum(domain, self.num_domains - 1).astype(np.int64)
        user = np.empty(n, dtype=np.int64)
        for d in range(self.num_domains):
            rows = np.flatnonzero(domain == d)
            user[rows] = self.sample_users(rng, d, len(rows))
        return user, domain

    def sample_users(self, rng: np.random.Generator, domain: int, n: int) -> np.ndarray:
        """n users arriving in one domain: P(u | d) ∝ activity_u * taste_{u,d}."""
        cdf = self._user_cdfs[int(domain)]
        return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), self.num_users - 1)

    def sample_candidates(self, rng: np.random.Generator, domain: int, n_requests: int, k: int) -> np.ndarray:
        """(n_requests, k) distinct-per-row item indices from the domain pool, popularity-weighted.

        Draws 3k with replacement and keeps the first k distinct ones in draw order; a row
        that still lacks k distinct items (only with a tiny pool) is topped up uniformly.
        """
        pool = self._pools[int(domain)]
        if k > len(pool):
            raise UserError(f"domain {domain}: pool has {len(pool)} items, {k} candidates requested")
        draws = np.minimum(self._pool_inverse_cdfs[int(domain)](rng.random((n_requests, 3 * k))), len(pool) - 1)
        chosen, complete, is_first = sampling.first_distinct(draws, k, len(pool))
        for row in np.flatnonzero(~complete):
            unique = draws[row][is_first[row]].tolist()
            rest = rng.permutation(np.setdiff1d(np.arange(len(pool)), unique))[: k - len(unique)]
            chosen[row] = np.concatenate([unique, rest])
        return pool[chosen]

    # ----------------------------------------------------------------- ground truth
    def click_logit(self, user_idx, item_idx, domain) -> np.ndarray:
        """alpha_d + b_u + c_i + r[region_u, d] + s <m_d e_u + delta_d, v_i> / sqrt(D) (broadcasting)."""
        user_idx, item_idx, domain = np.asarray(user_idx), np.asarray(item_idx), np.asarray(domain)
        user_vec = self._user_latent[user_idx] * self._domain_sign[domain] + self._domain_shift[domain]
        affinity = np.sum(user_vec * self._item_latent[item_idx], axis=-1) / np.sqrt(self.config.latent_dim)
        return (self._domain_alpha[domain] + self._user_bias[user_idx] + self._item_bias[item_idx]
                + self._region_domain_bias[self._user_region[user_idx], domain]
                + self.config.affinity_scale * affinity)

    def examination_probability(self, position) -> np.ndarray:
        return (np.asarray(position, dtype=np.float64) + 1.0) ** -self.config.examination_eta

    def relevance_probability(self, user_idx, item_idx, domain) -> np.ndarray:
        """P(click) at position 0 (examination 1): the oracle ranking score."""
        return sigmoid(self.click_logit(user_idx, item_idx, domain))

    def click_probability(self, user_idx, item_idx, domain, position) -> np.ndarray:
        return self.examination_probability(position) * self.relevance_probability(user_idx, item_idx, domain)

    def purchase_probability(self, user_idx, item_idx, domain) -> np.ndarray:
        """P(purchase | click): price-sensitive, with a user-item purchase affinity and a domain term."""
        c = self.config
        user_idx, item_idx, domain = np.asarray(user_idx), np.asarray(item_idx), np.asarray(domain)
        affinity = np.sum(self._user_purchase_taste[user_idx] * self._item_latent[item_idx], axis=-1) / np.sqrt(c.latent_dim)
        logit = (c.purchase_logit + self._user_purchase_bias[user_idx] + 0.3 * self._item_bias[item_idx]
                 - c.price_sensitivity * (np.log(self._item_price[item_idx]) - c.price_log_mean)
                 + c.purchase_affinity_scale * affinity + self._purchase_domain_bias[domain])
        return sigmoid(logit)
