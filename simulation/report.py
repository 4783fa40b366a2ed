"""The A/B report: JSON (machine-readable), Markdown (tables and plain-words conclusions), PNG plots.

Input: a `SimulationResult` (crocodile.simulation.abtest), the policy's canary share per
domain and run metadata. Every estimate is printed beside the oracle (true) lift when the
run knows it. The p-values are fixed-horizon; the cumulative plot shows how the estimate
settles over simulated time and is not a licence to stop at the first significant point.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional

import numpy as np
from scipy import stats as sps

from crocodile.simulation import ab_verdict, stats
from crocodile.simulation.abtest import SECONDS_PER_DAY, SimulationResult, oracle_lifts

REPORT_JSON, REPORT_MD = "report.json", "report.md"
LIFT_PLOT, CUMULATIVE_PLOT = "lift_by_domain.png", "cumulative_lift.png"
CUMULATIVE_POINTS = 20
# mSPRT mixing scale on the relative lift: the size of effect the sequential test is tuned to
# find quickly (choice the literature leaves open; 5% relative, about a good model change).
MSPRT_TAU_REL = 0.05
METRIC_LABELS = {"ctr": "CTR", "clicks_per_user": "clicks/user", "gmv_per_user": "GMV/user"}


def cumulative_lift(result: SimulationResult, shares: np.ndarray, metric: str = "ctr",
                    points: int = CUMULATIVE_POINTS, pre_cells: Optional[stats.Cells] = None) -> List[dict]:
    """Overall relative lift and interval on the data up to each of `points` times (CUPED
    with `pre_cells`, as in the tables)."""
    rows = []
    in_experiment = [d for d in range(result.num_domains) if shares[d] not in (0.0, 1.0)]
    for upto in np.linspace(0, result.user.size, points + 1)[1:].astype(int):
        cells = result.cells(upto)
        if pre_cells is not None:
            cells = cells.with_pre_period(pre_cells)
        present = [d for d in in_experiment
                   if np.any(cells.canary[cells.domain == d]) and np.any(~cells.canary[cells.domain == d])]
        if len(np.unique(cells.user)) < 3 or not present:
            continue
        comparison = stats.overall_comparison(cells, present, metric, result.num_domains,
                                              use_cuped=pre_cells is not None)
        se_rel = (comparison.rel_ci[1] - comparison.rel_ci[0]) / (2 * sps.norm.ppf(1 - stats.ALPHA / 2))
        rows.append({"day": float((result.timestamp[upto - 1] - result.timestamp[0]) / SECONDS_PER_DAY),
                     "requests": int(upto), "rel_lift": comparison.rel_lift, "se_rel": float(se_rel),
                     "rel_ci": list(comparison.rel_ci), "p_value": comparison.p_value})
    if rows:  # always-valid p-values and intervals over the same looks
        p_values, lower, upper = stats.msprt([r["rel_lift"] for r in rows], [r["se_rel"] ** 2 for r in rows],
                                             MSPRT_TAU_REL)
        for row, p, lo, hi in zip(rows, p_values, lower, upper):
            row.update(always_valid_p=float(p), always_valid_ci=[float(lo), float(hi)])
    return rows


def build_report(result: SimulationResult, shares, meta: dict, alpha=stats.ALPHA, power=stats.POWER,
                 pre_period: Optional[SimulationResult] = None,
                 decide_with: str = ab_verdict.FIXED_HORIZON) -> dict:
    """Everything the report shows, as plain JSON-able data, opening with the verdict.

    With `pre_period` (the same world's traffic before the experiment, stable model for all),
    every metric is CUPED-adjusted with each user's pre-period value; the raw (unadjusted)
    values are kept beside them (`raw_*`). `decide_with`: which p-value of the primary metric
    decides (ab_verdict.FIXED_HORIZON or ALWAYS_VALID).
    """
    shares = np.asarray(shares, np.float64)
    raw_cells = result.cells()
    pre_cells = None if pre_period is None else pre_period.cells()
    cells = raw_cells if pre_cells is None else raw_cells.with_pre_period(pre_cells)
    analysis = stats.analyze(cells, shares, alpha, power, use_cuped=pre_period is not None)
    raw = analysis if pre_period is None else stats.analyze(raw_cells, shares, alpha, power)
    in_experiment = analysis["in_experiment"]
    # The overall truth over the same domains as the overall estimate (those split between the arms).
    oracle = oracle_lifts(result, in_experiment)

    def scope(scope_result: stats.ScopeResult, raw_result: stats.ScopeResult) -> dict:
        out = dataclasses.asdict(scope_result)
        truth = (oracle or {}).get(scope_result.scope)
        for name, metric in out["metrics"].items():
            plain = raw_result.metrics[name]
            metric.update(raw_stable=plain.stable, raw_canary=plain.canary, raw_rel_lift=plain.rel_lift,
                          raw_rel_ci=list(plain.rel_ci), raw_p_value=plain.p_value)
            metric["oracle_rel_lift"] = None if truth is None else truth[name]
            metric["oracle_se"] = None if truth is None else truth[name + "_se"]
            metric["oracle_in_ci"] = (None if truth is None or np.isnan(metric["rel_ci"][0])
                                      else bool(metric["rel_ci"][0] <= truth[name] <= metric["rel_ci"][1]))
        if truth is not None:
            out["oracle_ctr_stable"], out["oracle_ctr_canary"] = truth["ctr_stable"], truth["ctr_canary"]
        return out

    overall = scope(analysis["overall"], raw["overall"])
    domains = [scope(d, r) for d, r in zip(analysis["domains"], raw["domains"])]
    cumulative = cumulative_lift(result, shares, pre_cells=pre_cells)
    decision = ab_verdict.decide(overall, domains, in_experiment, alpha, decide_with,
                                 cumulative[-1]["always_valid_p"] if cumulative else None)
    in_scope = np.isin(raw_cells.domain, in_experiment)
    impact = ab_verdict.absolute_impact(overall, float(raw_cells.impressions[in_scope].sum()),
                                        float(np.unique(raw_cells.user[in_scope]).size), result.days,
                                        None if oracle is None else oracle["overall"])
    return {
        "verdict": decision["verdict"],
        "decision": decision,
        "candidate_status": meta.get("candidate_status"),
        "meta": meta,
        "alpha": alpha,
        "power": power,
        "multiple_comparison": analysis["multiple_comparison"],
        "relative_lift_interval": "delta method",
        "cuped": pre_period is not None,
        "p_values": "fixed-horizon",
        "srm_alarm_threshold": stats.SRM_ALARM_P,
        "domains_in_experiment": in_experiment,
        "overall": overall,
        "domains": domains,
        "absolute_impact": impact,
        "cumulative_ctr_lift": cumulative,
        "msprt_tau_rel": MSPRT_TAU_REL,
        "oracle_overall_ctr_lift": None if oracle is None else oracle["overall"]["ctr"],
        "oracle_overall_ctr_lift_se": None if oracle is None else oracle["overall"]["ctr_se"],
        "oracle_sampled_requests": (None if result.oracle_sampled_requests is None
                                    else result.oracle_sampled_requests.tolist()),
    }


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x))


def _pct(x, digits=2) -> str:
    return "n/a" if _missing(x) else f"{100 * x:+.{digits}f}%"


def _share(x) -> str:
    return "unknown" if _missing(x) else f"{x:g}"


def _mde(x) -> str:
    return "n/a" if _missing(x) else f"±{100 * x:.2f}%"


def _ci(ci) -> str:
    return "n/a" if ci is None or _missing(ci[0]) else f"[{100 * ci[0]:+.2f}%, {100 * ci[1]:+.2f}%]"


def _p(p) -> str:
    return "n/a" if _missing(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def _number(x, digits=0) -> str:
    return "n/a" if _missing(x) else f"{x:+,.{digits}f}"


def _oracle_pm(value, se) -> str:
    """An oracle lift, with its sampling error when the oracle was sampled."""
    if _missing(value):
        return "n/a"
    return _pct(value) + ("" if _missing(se) or se == 0 else f" ± {100 * se:.2f}%")


def verdict_lines(report: dict) -> List[str]:
    """The opening of the report: verdict, why, which p-value decided, truth, absolute impact."""
    decision = report["decision"]
    label = ab_verdict.VERDICT_LABELS[decision["verdict"]]
    lines = [f"**Verdict: {label}** ({'; '.join(decision['reasons'])})."]
    p_kind = ("always-valid (mSPRT) p-value of the last look: valid even if the run was watched and stopped early"
              if decision["decided_by"] == ab_verdict.ALWAYS_VALID else
              "fixed-horizon p-value: the run stopped at its planned size, so it is valid as is")
    cuped = " (CUPED-adjusted)" if report.get("cuped") else ""
    lines.append(f"Primary metric: overall CTR{cuped} over domains {report['domains_in_experiment']}: "
                 f"{_pct(decision['primary_rel_lift'])} (95% CI {_ci(decision['primary_rel_ci'])}), "
                 f"p = {_p(decision['primary_p_value'])}; decided by the {p_kind}.")
    guards = decision["guardrails"]
    if guards:
        lines.append("Guardrails (Holm across all of them): " + "; ".join(
            f"{g['name']} {_pct(g['rel_lift'])} (p = {_p(g['p_holm'])}{', FAILED' if g['failed'] else ''})"
            for g in guards) + ".")
    lines.append(f"Rule: {decision['rule']}")
    overall = report["overall"]["metrics"]
    truth = overall.get("ctr", {}).get("oracle_rel_lift")
    if report.get("candidate_status") or truth is not None:
        status = report.get("candidate_status")
        text = f"Candidate: {status}. " if status else ""
        if truth is not None:
            text += (f"Simulated truth (oracle, same domains): CTR {_oracle_pm(truth, overall['ctr']['oracle_se'])}, "
                     f"GMV/user {_oracle_pm(overall['gmv_per_user']['oracle_rel_lift'], overall['gmv_per_user']['oracle_se'])}.")
        lines.append(text.strip())
    impact = report.get("absolute_impact")
    if impact:
        oracle = ""
        if impact["oracle_clicks_per_day"] is not None:
            oracle = (f" True (oracle): {_number(impact['oracle_clicks_per_day'])} clicks/day, "
                      f"{_number(impact['oracle_gmv_per_day'])} GMV/day.")
        lines.append(f"Absolute impact if all of the experiment's traffic ({impact['impressions_per_day']:,.0f} "
                     f"impressions/day over {impact['days']:g} simulated days) got the canary: "
                     f"{_number(impact['clicks_per_day'])} clicks/day (95% CI {_number(impact['clicks_per_day_ci'][0])} "
                     f"to {_number(impact['clicks_per_day_ci'][1])}), {_number(impact['gmv_per_day'])} GMV/day "
                     f"(95% CI {_number(impact['gmv_per_day_ci'][0])} to {_number(impact['gmv_per_day_ci'][1])})."
                     + oracle)
    return lines


# One plain line per statistical term the report uses.
GLOSSARY = [
    ("lift", "relative change of the canary against stable: canary / stable - 1."),
    ("95% CI", "a range built so that 95 of 100 such runs contain the true lift; excluding 0 means significant."),
    ("p-value (fixed-horizon)", "how surprising the difference would be if the models were equal, valid only "
                                "when the run is read once, at its planned size."),
    ("always-valid p-value (mSPRT)", "a p-value that stays valid however often the run is watched and whenever it "
                                     "is stopped; larger than the fixed-horizon one, the price of peeking."),
    ("significant", "p < alpha (0.05): a difference this large is unlikely between equal models."),
    ("Holm", "adjusts a family of p-values (the domains, the guardrails) so the chance of any false alarm in the "
             "family stays at alpha."),
    ("Benjamini-Hochberg (BH)", "a milder adjustment that bounds the share of false alarms among the "
                                "significant results; for exploring, not deciding."),
    ("MDE", "minimum detectable effect: the smallest lift this run finds 80% of the time; smaller true lifts "
            "usually come out 'not significant'."),
    ("CUPED", "subtracts what each user's pre-period behaviour predicts, removing noise without bias (the "
              "pre-period cannot depend on the assignment); same lift, narrower interval."),
    ("delta method", "the standard error of a ratio (CTR = clicks / impressions) with the user as the unit, since "
                     "one user's impressions are correlated."),
    ("Student's t-test (pooled variance)", "compares two means (per-user values) with one variance from both "
                                           "arms, the variance the random assignment gives when the canary changes "
                                           "nothing; it stays calibrated for rare, heavy-tailed GMV in a small arm."),
    ("post-stratified", "the overall value weights each domain the same way in both arms, so different canary "
                        "shares per domain do not leak into the lift."),
    ("SRM", "sample ratio mismatch: the users per arm do not match the policy's split; the run is not trustworthy."),
    ("oracle lift", "the true lift, from the world's known click and purchase probabilities on the same traffic; "
                    "'± x%' is its sampling error when only a sample of requests was scored by both models."),
    ("guardrail", "a metric that must not get significantly worse for a ship decision."),
]


def conclusions(report: dict) -> List[str]:
    """What a reader may conclude, in plain words."""
    alpha, lines = report["alpha"], []
    if "decision" in report:
        lines.append(verdict_lines(report)[0])
    overall = report["overall"]
    if overall["srm_alarm"]:
        lines.append(f"**Sample ratio mismatch** overall (p = {_p(overall['srm_p'])}): the split of users does "
                     "not match the policy. Find the cause before trusting any lift below.")
    for d in report["domains"]:
        if d["srm_alarm"]:
            lines.append(f"**Sample ratio mismatch in {d['scope']}** (p = {_p(d['srm_p'])}).")
    power = int(round(100 * report["power"]))
    for name, label in METRIC_LABELS.items():
        m = overall["metrics"].get(name)
        if m is None:
            continue
        truth = "" if m["oracle_rel_lift"] is None else f" The true (oracle) lift is {_pct(m['oracle_rel_lift'])}."
        if _missing(m["p_value"]) or _missing(m["rel_lift"]):
            lines.append(f"Overall, {label} cannot be compared in this run (too little data in an arm).{truth}")
        elif m["p_value"] < alpha:
            direction = "raises" if m["rel_lift"] > 0 else "lowers"
            lines.append(f"Overall, the canary {direction} {label} by {_pct(m['rel_lift'])} "
                         f"(95% CI {_ci(m['rel_ci'])}, p = {_p(m['p_value'])}).{truth}")
        else:
            lines.append(f"Overall, no significant {label} difference ({_pct(m['rel_lift'])}, 95% CI "
                         f"{_ci(m['rel_ci'])}). Not enough traffic to detect a {label} lift smaller than "
                         f"±{100 * m['mde_rel']:.2f}% (the run's MDE at {power}% power).{truth}")
    cumulative = report.get("cumulative_ctr_lift") or []
    if cumulative:
        last = cumulative[-1]
        lines.append(f"Always-valid (mSPRT) CTR p-value over {len(cumulative)} looks: {_p(last['always_valid_p'])}, "
                     f"interval {_ci(last['always_valid_ci'])}; unlike the fixed-horizon p-value it stays valid "
                     "if the run was watched and stopped early.")
    for d in report["domains"]:
        m = d["metrics"].get("ctr")
        small = m is not None and min(d["users_stable"], d["users_canary"]) < stats.MIN_USERS_PER_ARM
        if small:
            lines.append(f"{d['scope']}: fewer than {stats.MIN_USERS_PER_ARM} users in an arm "
                         f"({d['users_stable']}/{d['users_canary']}); its intervals and p-values are rough.")
        if m is None or _missing(m["p_holm"]):
            lines.append(f"{d['scope']}: not compared (canary share {_share(d['canary_share'])}, or too few users "
                         "in an arm).")
        elif m["p_holm"] < alpha:
            lines.append(f"{d['scope']}: CTR {_pct(m['rel_lift'])} (95% CI {_ci(m['rel_ci'])}), significant after "
                         f"Holm (p = {_p(m['p_holm'])}).")
        else:
            lines.append(f"{d['scope']}: no significant CTR difference after Holm (p = {_p(m['p_holm'])}); "
                         f"not enough traffic to detect a CTR lift smaller than ±{100 * m['mde_rel']:.1f}%.")
    return lines


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    out = [f"# A/B test: canary vs stable ({meta.get('mode', '?')})", ""]
    out += ["## Verdict", ""] + [f"- {line}" for line in verdict_lines(report)]
    out += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    out += ["", "## What this run says", ""] + [f"- {line}" for line in conclusions(report)[1:]]
    overall = report["overall"]
    out += ["", "## Overall (post-stratified by domain; user-clustered delta method)", "",
            f"Users stable/canary: {overall['users_stable']}/{overall['users_canary']}; impressions "
            f"{overall['impressions_stable']:.0f}/{overall['impressions_canary']:.0f}; SRM p = "
            f"{_p(overall['srm_p'])}{' **ALARM**' if overall['srm_alarm'] else ''}", "",
            "| metric | stable | canary | lift | 95% CI | p | MDE | oracle lift |", "|---|---|---|---|---|---|---|---|"]
    for name, label in METRIC_LABELS.items():
        m = overall["metrics"].get(name)
        if m:
            label = label + (" (CUPED)" if m["cuped"] else "")
            out.append(f"| {label} | {m['stable']:.5g} | {m['canary']:.5g} | {_pct(m['rel_lift'])} | {_ci(m['rel_ci'])} "
                       f"| {_p(m['p_value'])} | {_mde(m['mde_rel'])} | {_oracle_pm(m['oracle_rel_lift'], m['oracle_se'])} |")
    if report.get("cuped"):
        out += ["", "## Raw and CUPED-adjusted (the estimates above and below are CUPED-adjusted)", "",
                "| scope | metric | raw stable | raw canary | raw lift | raw 95% CI | CUPED stable | CUPED canary "
                "| CUPED lift | CUPED 95% CI |", "|" + "---|" * 10]
        for part in [overall] + report["domains"]:
            for name in ("ctr", "gmv_per_user"):
                m = part["metrics"].get(name)
                if m:
                    out.append(f"| {part['scope']} | {METRIC_LABELS[name]} | {m['raw_stable']:.5g} | {m['raw_canary']:.5g} "
                               f"| {_pct(m['raw_rel_lift'])} | {_ci(m['raw_rel_ci'])} | {m['stable']:.5g} "
                               f"| {m['canary']:.5g} | {_pct(m['rel_lift'])} | {_ci(m['rel_ci'])} |")
    out += ["", "## Per domain (p-values Holm-adjusted across domains)", "",
            "| domain | canary share | users S/C | impressions S/C | CTR S | CTR C | CTR lift | CTR 95% CI | p (Holm) "
            "| CTR oracle | GMV/user S | GMV/user C | GMV lift | GMV 95% CI | p (Holm) | GMV oracle | CTR MDE | SRM p |",
            "|" + "---|" * 18]
    for d in report["domains"]:
        ctr, gmv = d["metrics"].get("ctr"), d["metrics"].get("gmv_per_user")
        head = (f"| {d['scope'].split()[-1]} | {_share(d['canary_share'])} | {d['users_stable']}/{d['users_canary']} | "
                f"{d['impressions_stable']:.0f}/{d['impressions_canary']:.0f} | ")
        if ctr is None:
            out.append(head + " | ".join(["n/a"] * 14) + f" | {_p(d['srm_p'])} |")
            continue
        alarm = " **ALARM**" if d["srm_alarm"] else ""
        out.append(head + f"{ctr['stable']:.4f} | {ctr['canary']:.4f} | {_pct(ctr['rel_lift'])} | {_ci(ctr['rel_ci'])} | "
                   f"{_p(ctr['p_holm'])} | {_pct(ctr['oracle_rel_lift'])} | {gmv['stable']:.3g} | {gmv['canary']:.3g} | "
                   f"{_pct(gmv['rel_lift'])} | {_ci(gmv['rel_ci'])} | {_p(gmv['p_holm'])} | "
                   f"{_pct(gmv['oracle_rel_lift'])} | {_mde(ctr['mde_rel'])} | {_p(d['srm_p'])}{alarm} |")
    out += ["", "## Method", "",
            "- Unit: the user (the router randomises users within a domain). CTR is a ratio metric: delta method "
            "with the user as cluster. Clicks/user and GMV/user per domain: Student's t-test (pooled variance; "
            "Welch's under-covers heavy-tailed GMV in a small arm).",
            "- CUPED: " + ("every metric adjusted by the user's pre-period value in the domain (stable model for "
                           "all users before the experiment): clicks/user and GMV/user by their own pre-period "
                           "value, CTR's numerator by the linearised pre-period CTR; the stable/canary columns "
                           "are adjusted values."
                           if report.get("cuped") else "off (no pre-period covariate)."),
            "- Relative-lift intervals: delta method. Overall: post-stratified by domain (same domain weights "
            "for both arms), normal approximation.",
            f"- Per-domain p-values: {report['multiple_comparison']}. Fixed-horizon p-values (valid at the planned "
            "end of the run only).",
            f"- Cumulative view: always-valid mSPRT p-values and intervals (normal mixture, tau = "
            f"{100 * report.get('msprt_tau_rel', MSPRT_TAU_REL):g}% relative lift) over the plotted looks.",
            f"- SRM: chi-square of users per arm against the policy share; alarm at p < {report['srm_alarm_threshold']}.",
            f"- MDE: smallest relative lift detected with {int(100 * report['power'])}% power at alpha "
            f"{report['alpha']}, from this run's standard errors.",
            "- Oracle lift: expected clicks/GMV of the lists each model would show on the same traffic, from the "
            "world's true probabilities; overall over the same domains as the estimate. "
            + ("Every request was scored by both models (exact)." if not any(
                (report["overall"]["metrics"].get(n) or {}).get("oracle_se") for n in METRIC_LABELS)
               else f"The other arm's model scored a random sample of requests per domain "
                    f"({report.get('oracle_sampled_requests')}); '±' is the oracle's sampling error."),
            "", "## Terms", ""] + [f"- **{term}**: {meaning}" for term, meaning in GLOSSARY] + [""]
    return "\n".join(out)


def plot_lift_by_domain(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scopes = [report["overall"]] + report["domains"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ("ctr", "gmv_per_user")):
        for x, s in enumerate(scopes):
            m = s["metrics"].get(name)
            if m is None:
                continue
            lift, (lo, hi) = 100 * m["rel_lift"], m["rel_ci"]
            ax.errorbar(x, lift, yerr=[[lift - 100 * lo], [100 * hi - lift]], fmt="o", color="tab:blue",
                        capsize=4, label="estimate, 95% CI" if x == 0 else None)
            if m["oracle_rel_lift"] is not None:
                ax.plot(x, 100 * m["oracle_rel_lift"], "x", color="tab:red", markersize=9,
                        label="oracle (true) lift" if x == 0 else None)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(scopes)), ["overall"] + [s["scope"].replace("domain ", "d") for s in scopes[1:]])
        ax.set_ylabel(f"relative {METRIC_LABELS[name]} lift (%)")
        ax.set_title(f"{METRIC_LABELS[name]} lift by domain")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cumulative(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["cumulative_ctr_lift"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        day = [r["day"] for r in rows]
        ax.plot(day, [100 * r["rel_lift"] for r in rows], "o-", label="cumulative CTR lift")
        ax.fill_between(day, [100 * r["rel_ci"][0] for r in rows], [100 * r["rel_ci"][1] for r in rows],
                        alpha=0.25, label="95% CI (fixed-horizon)")
        for bound in (0, 1):
            ax.plot(day, [100 * r["always_valid_ci"][bound] for r in rows], ":", color="tab:green",
                    label="always-valid 95% CI (mSPRT)" if bound == 0 else None)
    if report["oracle_overall_ctr_lift"] is not None:
        ax.axhline(100 * report["oracle_overall_ctr_lift"], color="tab:red", linestyle="--", label="oracle lift")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("simulated days")
    ax.set_ylabel("relative CTR lift (%)")
    ax.set_title("Cumulative overall CTR lift" + (" (CUPED)" if report.get("cuped") else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, directory: str) -> Dict[str, str]:
    """Writes report.json, report.md and the two PNGs; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {kind: os.path.join(directory, name) for kind, name in
             (("json", REPORT_JSON), ("markdown", REPORT_MD), ("lift_plot", LIFT_PLOT),
              ("cumulative_plot", CUMULATIVE_PLOT))}
    with open(paths["json"], "w") as f:
        json.dump(_strict_json(report), f, indent=2, allow_nan=False)
    with open(paths["markdown"], "w") as f:
        f.write(to_markdown(report))
    plot_lift_by_domain(report, paths["lift_plot"])
    plot_cumulative(report, paths["cumulative_plot"])
    return paths


def _strict_json(value):
    """NaN/inf -> null and numpy scalars -> Python, so the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
