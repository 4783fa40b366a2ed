"""The demo summary's A/B lines: overall and per domain, the estimate beside the true lift."""
from crocodile import demo


def _ctr(lift, low, high, oracle=None):
    ctr = {"rel_lift": lift, "rel_ci": [low, high]}
    if oracle is not None:
        ctr["oracle_rel_lift"] = oracle
    return {"metrics": {"ctr": ctr}}


def test_ab_lines_show_each_domains_estimate_beside_its_true_lift():
    report = {"verdict": "ship", "overall": _ctr(0.0801, 0.0570, 0.1031), "oracle_overall_ctr_lift": 0.0583,
              "domains": [dict(scope="domain 0", **_ctr(0.1146, 0.0838, 0.1453, 0.0856)),
                          dict(scope="domain 4", **_ctr(0.1133, 0.0241, 0.2025, 0.0337)),
                          dict(scope="domain 5", **_ctr(0.02, -0.01, 0.05))]}
    assert demo._ab_lines(report) == [
        "verdict: ship",
        "CTR lift +8.01% [+5.70%, +10.31%]",
        "true (oracle) CTR lift +5.83%",
        "  domain 0   CTR lift +11.46% [+8.38%, +14.53%]  true +8.56%",
        "  domain 4   CTR lift +11.33% [+2.41%, +20.25%]  true +3.37%",
        "  domain 5   CTR lift +2.00% [-1.00%, +5.00%]",
    ]


def test_ab_lines_leave_out_what_the_report_lacks():
    assert demo._ab_lines({}) == []
    assert demo._ab_lines({"verdict": "inconclusive", "domains": [{"scope": "domain 1"}, None]}) == \
        ["verdict: inconclusive"]
