"""CanaryPolicy: validation names the key; assignment deterministic, sticky, uniform, independent."""
import math

import numpy as np
import pytest

from crocodile.errors import UserError
from crocodile.serving.policy import CANARY, STABLE, CanaryPolicy, hash_unit_interval

POLICY = {"experiment": "exp-a", "salt": "s1", "default_canary_share": 0.1,
          "domains": {0: 0.05, 1: 0.2, 2: 0.5, 3: 0.0, 4: 1.0}, "on_canary_failure": "fallback"}


@pytest.mark.parametrize("change, key", [
    ({"domains": {0: 1.5}}, "domains.0"),
    ({"domains": {"x": 0.1}}, "domains.x"),
    ({"default_canary_share": "lots"}, "default_canary_share"),
    ({"on_canary_failure": "retry"}, "on_canary_failure"),
    ({"salt": ""}, "salt"),
    ({"experimnet": "typo"}, "experimnet"),
])
def test_validation_error_names_the_key(change, key):
    with pytest.raises(UserError, match=key):
        CanaryPolicy.from_dict({**POLICY, **change})


def test_load_yaml_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("experiment: e\nsalt: s\ndefault_canary_share: 0.25\ndomains:\n  2: 0.5\non_canary_failure: fail\n")
    policy = CanaryPolicy.load(str(path))
    assert policy.domains == {2: 0.5} and policy.share_for(7) == 0.25 and policy.on_canary_failure == "fail"
    path.write_text("experiment: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        CanaryPolicy.load(str(path))


def test_hash_is_sha256_of_the_fields():
    import hashlib
    digest = hashlib.sha256("exp-a\x1fs1\x1f2\x1fu7".encode()).digest()
    assert hash_unit_interval("exp-a", "s1", 2, "u7") == int.from_bytes(digest[:8], "big") / 2 ** 64


def test_share_per_domain_within_binomial_bounds():
    policy = CanaryPolicy.from_dict(POLICY)
    users = np.array([f"u{k:06d}" for k in range(20000)])
    for domain, share in POLICY["domains"].items():
        canary = policy.assign_many(np.full(users.shape, domain), users)
        n = users.size
        # 4.5 sigma: the chance of a false alarm over these 5 checks is ~3e-5.
        bound = 4.5 * math.sqrt(n * share * (1 - share))
        assert abs(canary.sum() - n * share) <= bound, (domain, canary.sum())
    assert not policy.assign_many(np.full(users.shape, 3), users).any()
    assert policy.assign_many(np.full(users.shape, 4), users).all()


def test_sticky_and_same_function_as_arm_for():
    policy = CanaryPolicy.from_dict(POLICY)
    users = np.array([f"u{k}" for k in range(500)])
    domains = np.arange(500) % 5
    vector = policy.assign_many(domains, users)
    scalar = [policy.arm_for(int(d), str(u)) for d, u in zip(domains, users)]
    assert [CANARY if v else STABLE for v in vector] == scalar
    assert all(policy.arm_for(int(d), str(u)) == a for d, u, a in zip(domains, users, scalar))
    assert policy.arm_for(1, b"u3") == policy.arm_for(1, "u3")


def test_experiments_are_independent():
    """Two experiments with share 0.5: the canary overlap is ~0.25, not 0.5 (not the same users)."""
    users = np.array([f"u{k}" for k in range(20000)])
    domains = np.full(users.shape, 2)
    a = CanaryPolicy.from_dict(POLICY).assign_many(domains, users)
    b = CanaryPolicy.from_dict({**POLICY, "experiment": "exp-b"}).assign_many(domains, users)
    both = (a & b).mean()
    assert abs(both - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / users.size)


def test_domain_metric_label_is_bounded():
    policy = CanaryPolicy.from_dict(POLICY)
    assert policy.domain_label(2) == "2" and policy.domain_label(99) == "other" and policy.domain_label(None) == "other"
