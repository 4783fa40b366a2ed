"""The A/B decision: ship, don't ship or inconclusive, from a primary metric and guardrails.

The rule (stated in every report, decided before the run is looked at):
- Primary metric: overall CTR over the domains in the experiment (post-stratified; CUPED-
  adjusted when the run has a pre-period). It decides with the fixed-horizon p-value when the
  run stopped at its planned size (every `crocodile abtest` run does), or with the always-valid
  (mSPRT) p-value of the last look when the run was watched and may have been stopped early.
- Guardrails: overall GMV per user and the CTR of every domain in the experiment, Holm-adjusted
  together (one family), two-sided; a guardrail fails when its adjusted p < alpha and its lift
  is negative.
- A sample ratio mismatch (overall or in any domain) makes the run untrustworthy: inconclusive.
- Otherwise: don't ship if the primary is significantly negative or a guardrail fails; ship if
  the primary is significantly positive (and no guardrail fails); else inconclusive (the run
  cannot tell; its MDE says what it could have seen).
Guardrails use fixed-horizon p-values in both modes (mSPRT is computed for the primary only).
"""
from typing import List, Optional

import numpy as np

from crocodile.model.multiple_testing import holm

SHIP, DONT_SHIP, INCONCLUSIVE = "ship", "dont_ship", "inconclusive"
VERDICT_LABELS = {SHIP: "SHIP", DONT_SHIP: "DON'T SHIP", INCONCLUSIVE: "INCONCLUSIVE"}
FIXED_HORIZON, ALWAYS_VALID = "fixed-horizon", "always-valid"
PRIMARY_METRIC = "ctr"
RULE = ("ship if the primary metric (overall CTR) is significantly positive and no guardrail (overall "
        "GMV/user, CTR of each domain; Holm across the guardrails) is significantly negative; don't ship if "
        "the primary is significantly negative or a guardrail is; otherwise inconclusive. A sample ratio "
        "mismatch makes the run inconclusive.")


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def decide(overall: dict, domains: List[dict], in_experiment: List[int], alpha: float,
           decide_with: str = FIXED_HORIZON, always_valid_p: Optional[float] = None) -> dict:
    """The verdict and why, from the report's scope dicts (see crocodile.simulation.report)."""
    if decide_with not in (FIXED_HORIZON, ALWAYS_VALID):
        raise ValueError(f"decide_with must be {FIXED_HORIZON!r} or {ALWAYS_VALID!r}, got {decide_with!r}")
    primary = overall["metrics"].get(PRIMARY_METRIC)
    p_primary = None
    if primary is not None:
        p_primary = always_valid_p if decide_with == ALWAYS_VALID else primary["p_value"]
    guardrails = []
    gmv = overall["metrics"].get("gmv_per_user")
    if gmv is not None:
        guardrails.append({"name": "overall GMV/user", "rel_lift": gmv["rel_lift"], "p_value": gmv["p_value"]})
    for d in in_experiment:
        ctr = domains[d]["metrics"].get("ctr")
        if ctr is not None:
            guardrails.append({"name": f"domain {d} CTR", "rel_lift": ctr["rel_lift"], "p_value": ctr["p_value"]})
    adjusted = holm([np.nan if _missing(g["p_value"]) else g["p_value"] for g in guardrails])
    for g, p in zip(guardrails, adjusted):
        g["p_holm"] = None if np.isnan(p) else float(p)
        g["failed"] = bool(g["p_holm"] is not None and g["p_holm"] < alpha and g["rel_lift"] < 0)
    failed = [g["name"] for g in guardrails if g["failed"]]
    srm = [s["scope"] for s in [overall] + list(domains) if s.get("srm_alarm")]
    reasons = []
    if srm:
        verdict = INCONCLUSIVE
        reasons.append(f"sample ratio mismatch in {', '.join(srm)}: the split is not what the policy asked for")
    elif primary is None or _missing(p_primary) or _missing(primary["rel_lift"]):
        verdict = INCONCLUSIVE
        reasons.append("the primary metric could not be compared (too little data in an arm)")
    else:
        significant = p_primary < alpha
        if significant and primary["rel_lift"] < 0:
            verdict = DONT_SHIP
            reasons.append("the primary metric (CTR) is significantly lower")
        elif failed:
            verdict = DONT_SHIP
            reasons.append("a guardrail is significantly lower: " + ", ".join(failed))
        elif significant:
            verdict = SHIP
            reasons.append("the primary metric (CTR) is significantly higher and no guardrail is significantly lower")
        else:
            verdict = INCONCLUSIVE
            reasons.append("the primary metric (CTR) is not significantly different"
                           + ("; a guardrail is lower: " + ", ".join(failed) if failed else ""))
    return {"verdict": verdict, "reasons": reasons, "primary_metric": "overall CTR", "decided_by": decide_with,
            "primary_p_value": None if _missing(p_primary) else float(p_primary),
            "primary_rel_lift": None if primary is None else primary["rel_lift"],
            "primary_rel_ci": None if primary is None else primary["rel_ci"],
            "guardrails": guardrails, "alpha": alpha, "rule": RULE}


def absolute_impact(overall: dict, impressions: float, users: float, days: float,
                    oracle: Optional[dict]) -> Optional[dict]:
    """Clicks and GMV per day if all of the experiment's traffic got the canary instead of stable.

    CTR lift (absolute) x impressions per day; GMV per user lift (absolute) x users / days (the
    overall per-user estimate is sum_d n_d mean_d / N, so N times its lift is the run's total).
    Oracle: the exact difference of expected clicks / GMV, per day.
    """
    ctr, gmv = overall["metrics"].get("ctr"), overall["metrics"].get("gmv_per_user")
    if ctr is None or gmv is None or not days or days <= 0:
        return None
    per_day_imps, per_day_users = impressions / days, users / days
    out = {
        "days": days, "impressions_per_day": per_day_imps, "users": users,
        "clicks_per_day": ctr["abs_lift"] * per_day_imps,
        "clicks_per_day_ci": [ctr["abs_ci"][0] * per_day_imps, ctr["abs_ci"][1] * per_day_imps],
        "gmv_per_day": gmv["abs_lift"] * per_day_users,
        "gmv_per_day_ci": [gmv["abs_ci"][0] * per_day_users, gmv["abs_ci"][1] * per_day_users],
        "oracle_clicks_per_day": None, "oracle_gmv_per_day": None,
    }
    if oracle is not None:
        out["oracle_clicks_per_day"] = (oracle["clicks_canary"] - oracle["clicks_stable"]) / days
        out["oracle_gmv_per_day"] = (oracle["gmv_canary"] - oracle["gmv_stable"]) / days
    return out
