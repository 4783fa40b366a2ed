"""The A/B report on hand-built simulation results: tables, plain-words conclusions, strict JSON, plots."""
import json

import numpy as np
import pytest

from crocodile.simulation import report, stats
from crocodile.simulation.abtest import SimulationResult

NUM_DOMAINS = 3
TRUE_LIFT = np.array([0.25, 0.0, 0.0])      # canary CTR lift per domain
DOMAIN_SHARES = np.array([0.7, 0.28, 0.02])  # domain 2 is a thin tail domain


def make_result(seed=0, requests=40000, users=4000, canary_shares=(0.5, 0.5, 0.5), drop_canary=0.0):
    rng = np.random.default_rng(seed)
    domain = rng.choice(NUM_DOMAINS, requests, p=DOMAIN_SHARES)
    user = rng.integers(0, users, requests)
    assignment = rng.random((users, NUM_DOMAINS)) < np.asarray(canary_shares)
    canary = assignment[user, domain]
    keep = ~(canary & (rng.random(users)[user] < drop_canary))  # lose some canary users' logs (SRM)
    domain, user, canary = domain[keep], user[keep], canary[keep]
    p = 0.04 * (1 + TRUE_LIFT[domain] * canary)
    clicks = rng.binomial(10, p)
    purchases = rng.binomial(clicks, 0.1)
    gmv = purchases * rng.lognormal(3, 1, clicks.size)
    n = user.size
    per_domain = np.bincount(domain, minlength=NUM_DOMAINS)
    oracle_clicks = np.array([0.4 * per_domain, 0.4 * per_domain * (1 + TRUE_LIFT)])  # 10 slots x 4% CTR
    return SimulationResult(user=user, domain=domain, canary=canary, impressions=np.full(n, 10), clicks=clicks,
                            purchases=purchases, gmv=gmv, timestamp=np.sort(rng.random(n)) * 14 * 86400,
                            version=np.full(n, -1), num_domains=NUM_DOMAINS, slate_size=10,
                            oracle_clicks=oracle_clicks, oracle_gmv=oracle_clicks * 3.0,
                            oracle_requests=per_domain, days=14.0)


@pytest.fixture(scope="module")
def built():
    return report.build_report(make_result(), [0.5, 0.5, 0.5], {"mode": "test"})


def test_tables_hold_every_domain_with_estimate_oracle_and_srm(built):
    markdown = report.to_markdown(built)
    domain_rows = [line for line in markdown.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")
                   or line.startswith("| 2 |")]
    assert len(domain_rows) == 3
    # Domain 0: oracle CTR lift +25.00% is printed beside the estimate.
    assert "+25.00%" in domain_rows[0]
    assert all(row.count("|") == 19 for row in domain_rows)
    assert "| CTR |" in markdown and "| GMV/user |" in markdown and "SRM p" in markdown
    ctr0 = built["domains"][0]["metrics"]["ctr"]
    assert ctr0["oracle_rel_lift"] == pytest.approx(0.25) and ctr0["oracle_in_ci"]


def test_conclusions_say_what_was_found_and_what_was_too_small_to_see(built):
    lines = report.conclusions(built)
    text = "\n".join(lines)
    assert "Overall, the canary raises CTR" in text
    # The thin tail domain: not significant, and the report says what it could have detected.
    tail = [line for line in lines if line.startswith("domain 2:") and "not enough traffic" in line]
    assert tail, text
    mde = built["domains"][2]["metrics"]["ctr"]["mde_rel"]
    assert f"±{100 * mde:.1f}%" in tail[0]
    assert "Sample ratio mismatch" not in text


def test_skewed_split_is_reported_as_sample_ratio_mismatch():
    skewed = report.build_report(make_result(seed=1, drop_canary=0.1), [0.5, 0.5, 0.5], {"mode": "test"})
    assert skewed["overall"]["srm_alarm"]
    assert report.conclusions(skewed)[0].startswith("**Sample ratio mismatch** overall")


def test_cumulative_lift_ends_at_the_overall_estimate(built):
    rows = built["cumulative_ctr_lift"]
    assert len(rows) == report.CUMULATIVE_POINTS
    assert np.all(np.diff([r["day"] for r in rows]) > 0)
    widths = [r["rel_ci"][1] - r["rel_ci"][0] for r in rows]
    assert widths[-1] < widths[0] / 3  # 20x the data: about sqrt(20) narrower
    assert rows[-1]["rel_lift"] == pytest.approx(built["overall"]["metrics"]["ctr"]["rel_lift"])


def test_written_files_are_strict_json_markdown_and_png(built, tmp_path):
    no_policy = report.build_report(make_result(seed=2, requests=3000), [np.nan] * NUM_DOMAINS, {"mode": "test"})
    assert np.isnan(no_policy["overall"]["srm_p"])
    paths = report.write_report(no_policy, str(tmp_path))

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    data = json.loads(open(paths["json"]).read(), parse_constant=reject)
    assert data["overall"]["srm_p"] is None and data["domains"][0]["canary_share"] is None
    markdown = open(paths["markdown"]).read()
    assert "unknown" in markdown
    assert "domain 2: fewer than" in markdown  # about 30 users per arm: flagged as rough
    for kind in ("lift_plot", "cumulative_plot"):
        with open(paths[kind], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_oracle_prints_not_available():
    result = make_result(seed=3, requests=5000)
    result.oracle_clicks = result.oracle_gmv = result.oracle_requests = None
    built = report.build_report(result, [0.5, 0.5, 0.5], {"mode": "live"})
    assert built["overall"]["metrics"]["ctr"]["oracle_rel_lift"] is None
    assert "| n/a |" in report.to_markdown(built)
    assert stats.METRICS.keys() == built["overall"]["metrics"].keys()


def test_cumulative_rows_carry_always_valid_p_values_wider_than_fixed_horizon(built):
    rows = built["cumulative_ctr_lift"]
    p_values = [r["always_valid_p"] for r in rows]
    assert np.all(np.diff(p_values) <= 0)
    for r in rows:
        assert r["always_valid_ci"][0] < r["rel_ci"][0] and r["always_valid_ci"][1] > r["rel_ci"][1]
    assert any("Always-valid (mSPRT)" in line for line in report.conclusions(built))
