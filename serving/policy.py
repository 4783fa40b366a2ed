"""The canary policy: which users of which domain the canary answers.

A user's arm is a pure function of (experiment, salt, domain, user): the first 8 bytes of
SHA-256 over those fields, read as a number in [0, 1), against the domain's canary share.
So assignment is deterministic (no state to store), sticky (the same user always lands in
the same arm of a domain), uniform (SHA-256 output bits are uniform), and independent across
experiments and domains (the experiment name and salt enter the hash, so a new experiment
reshuffles users instead of reusing the last one's canary population). The unit of
randomisation is the user within a domain (DESIGN section 6).

YAML keys (the router and the A/B simulator read the same file):
``experiment`` (str), ``salt`` (str), ``default_canary_share`` (0..1),
``domains`` ({domain id: share}), ``on_canary_failure`` (``fallback`` | ``fail``).
"""
import dataclasses
import hashlib
from typing import Dict, Optional

import numpy as np

from crocodile.errors import UserError

STABLE, CANARY = "stable", "canary"
FALLBACK, FAIL = "fallback", "fail"
POLICY_KEYS = ("experiment", "salt", "default_canary_share", "domains", "on_canary_failure")
REQUIRED_KEYS = ("experiment", "salt")
_TWO_TO_64 = float(2 ** 64)


def _share(value, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{source}: key '{key}' must be a number in [0, 1], got {value!r}")
    return float(value)


def hash_unit_interval(experiment: str, salt: str, domain_id: int, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, salt, domain, user)."""
    key = f"{experiment}\x1f{salt}\x1f{int(domain_id)}\x1f{user_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / _TWO_TO_64


@dataclasses.dataclass(frozen=True)
class CanaryPolicy:
    experiment: str
    salt: str
    default_canary_share: float = 0.0
    domains: Dict[int, float] = dataclasses.field(default_factory=dict)
    on_canary_failure: str = FALLBACK

    @classmethod
    def from_dict(cls, data, source: str = "policy") -> "CanaryPolicy":
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping with keys {list(POLICY_KEYS)}")
        unknown = sorted(set(map(str, data)) - set(POLICY_KEYS))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; allowed: {list(POLICY_KEYS)}")
        for key in REQUIRED_KEYS:
            if not isinstance(data.get(key), (str, int)) or str(data.get(key)) == "":
                raise UserError(f"{source}: key '{key}' is required and must be a non-empty string")
        default_share = _share(data.get("default_canary_share", 0.0), "default_canary_share", source)
        domains_raw = data.get("domains") or {}
        if not isinstance(domains_raw, dict):
            raise UserError(f"{source}: key 'domains' must map domain ids to shares")
        domains = {}
        for domain, share in domains_raw.items():
            try:
                domain_id = int(domain)
            except (TypeError, ValueError):
                raise UserError(f"{source}: key 'domains.{domain}' is not an integer domain id") from None
            if domain_id < 0:
                raise UserError(f"{source}: key 'domains.{domain}' must be a domain id >= 0")
            domains[domain_id] = _share(share, f"domains.{domain}", source)
        on_failure = data.get("on_canary_failure", FALLBACK)
        if on_failure not in (FALLBACK, FAIL):
            raise UserError(f"{source}: key 'on_canary_failure' must be '{FALLBACK}' or '{FAIL}', "
                            f"got {on_failure!r}")
        return cls(str(data["experiment"]), str(data["salt"]), default_share, domains, on_failure)

    @classmethod
    def load(cls, path: str) -> "CanaryPolicy":
        import yaml  # only policy loading needs YAML
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError as error:
            raise UserError(f"policy file {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise UserError(f"policy file {path}: not valid YAML: {error}") from None
        return cls.from_dict(data, source=f"policy file {path}")

    def share_for(self, domain_id: int) -> float:
        return self.domains.get(int(domain_id), self.default_canary_share)

    def is_canary(self, domain_id: int, user_id) -> bool:
        if isinstance(user_id, bytes):
            user_id = user_id.decode("utf-8", "replace")
        share = self.share_for(domain_id)
        return share > 0.0 and hash_unit_interval(self.experiment, self.salt, domain_id, str(user_id)) < share

    def arm_for(self, domain_id: int, user_id) -> str:
        return CANARY if self.is_canary(domain_id, user_id) else STABLE

    def assign_many(self, domain_ids: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        """Vector form of ``arm_for`` (True = canary), the same function per element."""
        domain_ids, user_ids = np.asarray(domain_ids), np.asarray(user_ids)
        if domain_ids.shape != user_ids.shape:
            raise ValueError(f"domain_ids {domain_ids.shape} and user_ids {user_ids.shape} differ in shape")
        return np.fromiter((self.is_canary(d, u) for d, u in zip(domain_ids.ravel().tolist(),
                                                                   user_ids.ravel().tolist())),
                           dtype=bool, count=domain_ids.size).reshape(domain_ids.shape)

    def domain_label(self, domain_id: Optional[int]) -> str:
        """Metric label for a domain: its id when the policy names it, else 'other' (bounded cardinality)."""
        return str(domain_id) if domain_id is not None and int(domain_id) in self.domains else "other"
