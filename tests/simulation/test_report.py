"""The A/B report on hand-built simulation results: tables, plain-words conclusions, strict JSON, plots."""
import json

import numpy as np
import pytest
from scipy import stats as sps

from crocodile.simulation import report, stats
from crocodile.simulation.abtest import SimulationResult

NUM_DOMAINS = 3
TRUE_LIFT = np.array([0.25, 0.0, 0.0])      # canary CTR lift per domain
DOMAIN_SHARES = np.array([0.7, 0.28, 0.02])  # domain 2 is a thin tail domain


def make_result(seed=0, requests=40000, users=4000, canary_shares=(0.5, 0.5, 0.5), drop_canary=0.0,
                lift=TRUE_LIFT):
    lift = np.asarray(lift, np.float64)
    rng = np.random.default_rng(seed)
    domain = rng.choice(NUM_DOMAINS, requests, p=DOMAIN_SHARES)
    user = rng.integers(0, users, requests)
    assignment = rng.random((users, NUM_DOMAINS)) < np.asarray(canary_shares)
    canary = assignment[user, domain]
    keep = ~(canary & (rng.random(users)[user] < drop_canary))  # lose some canary users' logs (SRM)
    domain, user, canary = domain[keep], user[keep], canary[keep]
    p = 0.04 * (1 + lift[domain] * canary)
    clicks = rng.binomial(10, p)
    purchases = rng.binomial(clicks, 0.1)
    gmv = purchases * rng.lognormal(3, 1, clicks.size)
    n = user.size
    per_domain = np.bincount(domain, minlength=NUM_DOMAINS)
    oracle_clicks = np.array([0.4 * per_domain, 0.4 * per_domain * (1 + lift)])  # 10 slots x 4% CTR
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
    assert report.conclusions(skewed)[1].startswith("**Sample ratio mismatch** overall")
    # An untrustworthy split decides nothing, whatever the lift.
    assert skewed["verdict"] == "inconclusive" and "sample ratio mismatch" in skewed["decision"]["reasons"][0]


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


def test_always_valid_p_values_and_intervals_match_the_mixture_likelihood_ratio(mixture_likelihood_ratio):
    # An A/A-like run (no lift anywhere): evidence goes up and down between looks.
    built = report.build_report(make_result(seed=4, lift=(0.0, 0.0, 0.0)), [0.5, 0.5, 0.5], {"mode": "test"})
    rows = built["cumulative_ctr_lift"]
    z = sps.norm.ppf(0.975)
    own = []
    for r in rows:
        se = (r["rel_ci"][1] - r["rel_ci"][0]) / (2 * z)  # the fixed-horizon interval's standard error
        own.append(min(1.0, 1 / mixture_likelihood_ratio(r["rel_lift"], se ** 2, report.MSPRT_TAU_REL)))
        for edge in r["always_valid_ci"]:
            assert mixture_likelihood_ratio(r["rel_lift"], se ** 2, report.MSPRT_TAU_REL,
                                            theta0=edge) == pytest.approx(20, rel=1e-4)
    # The p-value of a look is the smallest seen so far, not that look's own: at some look it binds.
    assert any(b > a for a, b in zip(np.minimum.accumulate(own), own))
    np.testing.assert_allclose([r["always_valid_p"] for r in rows], np.minimum.accumulate(own), rtol=1e-5)
    assert any("Always-valid (mSPRT)" in line for line in report.conclusions(built))


def test_verdict_follows_the_rule_for_primary_and_guardrails():
    # Domain 0 (70% of traffic) +25%: CTR up overall, no guardrail down.
    ship = report.build_report(make_result(), [0.5, 0.5, 0.5], {"mode": "test"})
    assert ship["verdict"] == "ship" and ship["decision"]["decided_by"] == "fixed-horizon"
    # Domain 0 up, domain 1 down by 30%: overall CTR still up, but a guardrail fails.
    mixed = report.build_report(make_result(seed=5, lift=(0.25, -0.3, 0.0)), [0.5, 0.5, 0.5], {"mode": "test"})
    assert mixed["overall"]["metrics"]["ctr"]["rel_lift"] > 0 and mixed["overall"]["metrics"]["ctr"]["p_value"] < 0.05
    failed = [g["name"] for g in mixed["decision"]["guardrails"] if g["failed"]]
    assert failed == ["domain 1 CTR"] and mixed["verdict"] == "dont_ship"
    # Guardrail p-values are Holm-adjusted over the whole guardrail family (GMV overall + 3 domains).
    raw = sorted(g["p_value"] for g in mixed["decision"]["guardrails"])
    assert min(g["p_holm"] for g in mixed["decision"]["guardrails"]) == pytest.approx(min(1, 4 * raw[0]))
    worse = report.build_report(make_result(seed=6, lift=(-0.25, 0.0, 0.0)), [0.5, 0.5, 0.5], {"mode": "test"})
    assert worse["verdict"] == "dont_ship" and "significantly lower" in worse["decision"]["reasons"][0]
    null = report.build_report(make_result(seed=8, lift=(0.0, 0.0, 0.0)), [0.5, 0.5, 0.5], {"mode": "test"})
    assert null["verdict"] == "inconclusive"
    # The always-valid p-value decides when asked to: it is the last look's.
    sequential = report.build_report(make_result(), [0.5, 0.5, 0.5], {"mode": "test"}, decide_with="always-valid")
    assert sequential["decision"]["primary_p_value"] == sequential["cumulative_ctr_lift"][-1]["always_valid_p"]
    markdown = report.to_markdown(sequential)
    assert markdown.splitlines()[2] == "## Verdict" and "**Verdict: SHIP**" in markdown
    assert "decided by the always-valid (mSPRT) p-value" in markdown


def test_overall_oracle_covers_the_same_domains_as_the_estimate():
    # Domain 2 is all stable (share 0): not in the estimate, so not in the overall truth either.
    result = make_result(seed=8, canary_shares=(0.5, 0.5, 0.0), lift=(0.25, 0.0, 0.6))
    built = report.build_report(result, [0.5, 0.5, 0.0], {"mode": "test"})
    assert built["domains_in_experiment"] == [0, 1]
    clicks = result.oracle_clicks[:, :2].sum(axis=1)
    truth = built["overall"]["metrics"]["ctr"]
    assert truth["oracle_rel_lift"] == pytest.approx(clicks[1] / clicks[0] - 1)
    assert truth["oracle_rel_lift"] != pytest.approx(result.oracle_clicks[1].sum() / result.oracle_clicks[0].sum() - 1)
    assert truth["oracle_in_ci"] == (truth["rel_ci"][0] <= truth["oracle_rel_lift"] <= truth["rel_ci"][1])


def test_absolute_impact_is_the_lift_times_the_daily_traffic(built):
    impact, overall = built["absolute_impact"], built["overall"]
    imps_per_day = (overall["impressions_stable"] + overall["impressions_canary"]) / 14.0
    assert impact["impressions_per_day"] == pytest.approx(imps_per_day)
    assert impact["clicks_per_day"] == pytest.approx(overall["metrics"]["ctr"]["abs_lift"] * imps_per_day)
    users = overall["users_stable"] + overall["users_canary"]  # 50/50 in every domain: users are in one arm ...
    gmv = overall["metrics"]["gmv_per_user"]
    assert impact["gmv_per_day"] == pytest.approx(gmv["abs_lift"] * impact["users"] / 14.0)
    assert impact["users"] <= users  # ... or both (a user may be canary in one domain and stable in another)
    result = make_result()
    expected_clicks = (result.oracle_clicks[1] - result.oracle_clicks[0]).sum() / 14.0
    assert impact["oracle_clicks_per_day"] == pytest.approx(expected_clicks)
    assert f"{impact['clicks_per_day']:+,.0f} clicks/day" in report.to_markdown(built)


def test_cuped_report_shows_raw_values_beside_adjusted_ones_and_the_candidate_status(tmp_path):
    result, pre = make_result(seed=9), make_result(seed=10)
    built = report.build_report(result, [0.5, 0.5, 0.5], {"mode": "test", "candidate_status": "not blessed by the "
                                                           "pipeline"}, pre_period=pre)
    ctr = built["overall"]["metrics"]["ctr"]
    plain = stats.analyze(result.cells(), [0.5, 0.5, 0.5])["overall"].metrics["ctr"]
    assert ctr["cuped"] and ctr["raw_stable"] == pytest.approx(plain.stable) and ctr["raw_rel_lift"] == plain.rel_lift
    assert ctr["rel_lift"] != plain.rel_lift
    markdown = report.to_markdown(built)
    assert "## Raw and CUPED-adjusted" in markdown
    verdict = markdown.split("## Run")[0]
    assert "Candidate: not blessed by the pipeline. Simulated truth (oracle, same domains): CTR" in verdict
    assert "## Terms" in markdown and "- **MDE**:" in markdown
    paths = report.write_report(built, str(tmp_path))
    data = json.loads(open(paths["json"]).read())
    assert data["verdict"] in ("ship", "dont_ship", "inconclusive")
    assert data["candidate_status"] == "not blessed by the pipeline"
