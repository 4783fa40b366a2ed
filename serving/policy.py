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
``domains`` ({domain id: share}), ``on_canary_failure`` (``fallback`` | ``fail``),
``allow_client_version`` (bool, default false: a request naming a version or label is refused),
``canary_abort`` (the router's circuit breaker, ``CanaryAbort``; absent: never aborts).
"""
import dataclasses
import hashlib
from typing import Dict, Optional

from crocodile.errors import UserError

STABLE, CANARY = "stable", "canary"
FALLBACK, FAIL = "fallback", "fail"
POLICY_KEYS = ("experiment", "salt", "default_canary_share", "domains", "on_canary_failure",
               "allow_client_version", "canary_abort")
ABORT_KEYS = ("max_error_rate", "max_p99_ms", "min_requests", "window_s")
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


def _positive(value, key: str, source: str, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise UserError(f"{source}: key '{key}' must be a positive {'integer' if integer else 'number'}, "
                        f"got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class CanaryAbort:
    """When the router stops assigning users to the canary (its circuit breaker).

    Over the canary's backend calls of the last ``window_s`` seconds, once there are at least
    ``min_requests`` of them: the canary is aborted when the share that failed exceeds
    ``max_error_rate`` or their p99 latency exceeds ``max_p99_ms`` (either limit may be omitted).
    """
    max_error_rate: Optional[float] = None
    max_p99_ms: Optional[float] = None
    min_requests: int = 50
    window_s: float = 60.0

    @classmethod
    def from_dict(cls, data, source: str) -> "CanaryAbort":
        if not isinstance(data, dict):
            raise UserError(f"{source}: key 'canary_abort' must be a mapping with keys {list(ABORT_KEYS)}")
        unknown = sorted(set(map(str, data)) - set(ABORT_KEYS))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {['canary_abort.' + k for k in unknown]}; "
                            f"allowed: {list(ABORT_KEYS)}")
        rate = data.get("max_error_rate")
        if rate is not None:
            rate = _share(rate, "canary_abort.max_error_rate", source)
        p99 = data.get("max_p99_ms")
        if p99 is not None:
            p99 = float(_positive(p99, "canary_abort.max_p99_ms", source))
        if rate is None and p99 is None:
            raise UserError(f"{source}: key 'canary_abort' needs 'max_error_rate' and/or 'max_p99_ms'")
        return cls(rate, p99, int(_positive(data.get("min_requests", cls.min_requests),
                                            "canary_abort.min_requests", source, integer=True)),
                   float(_positive(data.get("window_s", cls.window_s), "canary_abort.window_s", source)))


@dataclasses.dataclass(frozen=True)
class CanaryPolicy:
    experiment: str
    salt: str
    default_canary_share: float = 0.0
    domains: Dict[int, float] = dataclasses.field(default_factory=dict)
    on_canary_failure: str = FALLBACK
    allow_client_version: bool = False
    canary_abort: Optional[CanaryAbort] = None

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
        allow = data.get("allow_client_version", False)
        if not isinstance(allow, bool):
            raise UserError(f"{source}: key 'allow_client_version' must be true or false, got {allow!r}")
        abort = data.get("canary_abort")
        if isinstance(abort, CanaryAbort):
            pass
        elif abort is not None:
            abort = CanaryAbort.from_dict(abort, source)
        return cls(str(data["experiment"]), str(data["salt"]), default_share, domains, on_failure, allow, abort)

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

    def assign_many(self, domain_ids, user_ids):
        """Vector form of ``arm_for`` (True = canary), the same function per element."""
        import numpy as np  # the router does not need numpy; the A/B simulator does
        domain_ids, user_ids = np.asarray(domain_ids), np.asarray(user_ids)
        if domain_ids.shape != user_ids.shape:
            raise ValueError(f"domain_ids {domain_ids.shape} and user_ids {user_ids.shape} differ in shape")
        return np.fromiter((self.is_canary(d, u) for d, u in zip(domain_ids.ravel().tolist(),
                                                                   user_ids.ravel().tolist())),
                           dtype=bool, count=domain_ids.size).reshape(domain_ids.shape)

    def domain_label(self, domain_id: Optional[int]) -> str:
        """Metric label for a domain: its id when the policy names it, else 'other' (bounded cardinality)."""
        return str(domain_id) if domain_id is not None and int(domain_id) in self.domains else "other"
