"""Named worlds, fixed before any model is compared (`crocodile data generate --preset NAME`).

A preset is a set of WorldConfig fields plus a default log size. Other `generate` flags
(--impressions, --users, --seed, --format, ...) apply on top of it. The rationale of each
choice is in simulation/README.md ("World presets"); these values must not change after
a model comparison has been looked at, or every comparison made on them is void.

- ``demo``: sized for `make demo`. Users have real histories (the median active user has
  >= 30 training impressions) and the A/B traffic comes from the same users.
- ``benchmark``: the model-comparison world: the same structure as ``demo`` with about
  three times the logs and users, so tail domains have a few hundred eval clicks.
- ``null``: the negative control for ``benchmark``: same sizes, no conflicting
  dimensions, no per-domain preference shifts, no region-by-domain or per-domain purchase
  terms. Domains differ only in traffic, base CTR and item pool, which every model sees
  through the domain id, so multi-domain models must tie with a shared model there.

Shared structure of ``demo`` and ``benchmark`` (the multi-domain part):
- no domain is the neutral one (``reference_domain = -1``): every domain's preferences are
  shifted from the global taste, as a home feed, a follow tab and a search page each
  re-weight the same users' interests;
- the largest domain has a conflict (``conflict_codes[0] = 1``: dimension 0 flips there),
  and the second largest is the one that does not flip, so the largest two disagree on a
  dimension, as a feed that rewards novelty and a tab that rewards familiarity do;
  domains 2, 3, 4 flip dimension 1, 2 and both 0 and 1;
- purchase given click depends on a user-item purchase affinity and the domain.
"""
import dataclasses
from typing import Dict, Mapping

from crocodile.errors import UserError


@dataclasses.dataclass(frozen=True)
class Preset:
    description: str
    impressions: int
    world: Mapping[str, object]


# Purchase given click with a user-item affinity: the intercept moves down so that about
# one click in ten buys, as in the world without the affinity term.
_PURCHASE = {"purchase_affinity_scale": 1.0, "purchase_taste_correlation": 0.5, "purchase_logit": -3.0}
_MULTI_DOMAIN_STRUCTURE = {
    "num_conflict_dims": 3,
    "conflict_codes": (1, 0, 2, 4, 3),
    "reference_domain": -1,
    "domain_shift_sigma": 0.5,
    "purchase_domain_sigma": 0.4,
    **_PURCHASE,
}

PRESETS: Dict[str, Preset] = {
    "demo": Preset(
        description="sized for `make demo`: users with histories, domain structure in every domain",
        impressions=300_000,
        world={"num_users": 4_000, "num_items": 2_000, **_MULTI_DOMAIN_STRUCTURE},
    ),
    "benchmark": Preset(
        description="model comparison: demo's structure, 1M impressions, 12k users",
        impressions=1_000_000,
        world={"num_users": 12_000, "num_items": 3_000, **_MULTI_DOMAIN_STRUCTURE},
    ),
    "null": Preset(
        description="negative control for benchmark: no conflicts, shifts or domain-specific terms",
        impressions=1_000_000,
        world={"num_users": 12_000, "num_items": 3_000, "num_conflict_dims": 0, "domain_shift_sigma": 0.0,
               "reference_domain": -1, "region_domain_sigma": 0.0, "purchase_domain_sigma": 0.0, **_PURCHASE},
    ),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"--preset {name!r}: unknown; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def world_fields(name: str) -> dict:
    """The preset's WorldConfig fields, with its name recorded in ``preset``."""
    return {**get(name).world, "preset": name}
