"""Paired comparison of ranking models on the same eval rows, and the blessing rule.

One statistic serves the offline quality benchmark, ``crocodile model compare`` and the
pipeline's blessing gate, so a "significantly worse" domain means the same in all three.

gAUC differences use the same rows too: gAUC is a weighted mean of per-user AUCs, so
its contrast is a ratio estimator over users, whose variance is the linearised
(cluster-robust) one with users as clusters.

AUC difference on the same rows: DeLong, DeLong & Clarke-Pearson (1988), in the fast
mid-rank form of Sun & Xu (2014), generalised to clustered rows as in Obuchowski (1997).
Impressions of one user are not independent (the same user's taste shows in all of
them), so the variance is computed from per-user sums of the DeLong placement values;
with one row per cluster it reduces exactly to DeLong. The estimate is any linear
contrast of the AUCs of several score vectors on the same rows, which also gives the
mean difference over training seeds (every seed scores the same eval rows).

Blessing: a candidate is refused when, against the baseline, a domain's AUC (or gAUC: the
rule's ``statistic``) is significantly lower by more than ``domain_tolerance`` (one-sided, Holm
across the gated domains), or the overall one by more than ``overall_tolerance``.
Domains with fewer than ``min_clicks`` clicks (or no non-clicks) are reported as
"insufficient evidence" and not tested.
"""
import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as sps

from crocodile.model import metrics
from crocodile.model.multiple_testing import holm

INSUFFICIENT = "insufficient evidence"
# Below this, a difference or standard error is floating-point round-off (identical scores).
ROUND_OFF = 1e-12


def _midranks(values: np.ndarray) -> np.ndarray:
    """Average 1-based ranks along the last axis (ties share their mean rank)."""
    return sps.rankdata(values, method="average", axis=-1)


def _cluster_codes(clusters, n: int) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(f"clusters has shape {clusters.shape}, expected ({n},)")
    return np.unique(clusters, return_inverse=True)[1]


@dataclasses.dataclass
class AucContrast:
    """``estimate`` = sum_r weights[r] * AUC_r, with its standard error over eval rows."""
    aucs: np.ndarray
    estimate: float
    se: float
    positives: int
    negatives: int
    clusters: int


def auc_contrast(labels, scores, weights, clusters=None) -> AucContrast:
    """A linear contrast of the AUCs of ``scores`` (k, N) on the same N rows.

    The standard error is the clustered DeLong one (see the module docstring); it is NaN
    when there are no positives or no negatives.
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    weights = np.asarray(weights, dtype=np.float64).ravel()
    k, n = scores.shape
    if labels.size != n:
        raise ValueError(f"labels ({labels.size}) and scores ({n}) differ in length")
    if weights.size != k:
        raise ValueError(f"{weights.size} weights for {k} score vectors")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    pos, neg = labels == 1, labels == 0
    m, q = int(pos.sum()), int(neg.sum())
    codes = _cluster_codes(clusters, n)
    if m == 0 or q == 0:
        return AucContrast(np.full(k, np.nan), math.nan, math.nan, m, q, int(codes.max(initial=-1) + 1))
    ranks_all = _midranks(scores)
    ranks_pos = _midranks(scores[:, pos])
    ranks_neg = _midranks(scores[:, neg])
    # Placement values: share of negatives below each positive, of positives above each negative.
    v10 = (ranks_all[:, pos] - ranks_pos) / q            # (k, m)
    v01 = 1.0 - (ranks_all[:, neg] - ranks_neg) / m      # (k, q)
    aucs = v10.mean(axis=1)
    # Contrast of the centred placements, summed per cluster.
    a = weights @ (v10 - aucs[:, None])                  # (m,)
    b = weights @ (v01 - aucs[:, None])                  # (q,)
    num_clusters = int(codes.max() + 1)
    a_k = np.bincount(codes[pos], weights=a, minlength=num_clusters)
    b_k = np.bincount(codes[neg], weights=b, minlength=num_clusters)
    has_pos = np.bincount(codes[pos], minlength=num_clusters) > 0
    has_neg = np.bincount(codes[neg], minlength=num_clusters) > 0

    def inflate(count):  # unbiased-variance factor I / (I - 1); one cluster has no spread
        return count / (count - 1) if count > 1 else math.nan

    variance = (inflate(int(has_pos.sum())) * np.sum(a_k ** 2) / m ** 2
                + inflate(int(has_neg.sum())) * np.sum(b_k ** 2) / q ** 2
                + 2.0 * inflate(num_clusters) * np.sum(a_k * b_k) / (m * q))
    return AucContrast(aucs, float(weights @ aucs), float(math.sqrt(max(variance, 0.0))), m, q, num_clusters)


@dataclasses.dataclass
class GaucContrast:
    """``estimate`` = sum_r weights[r] * gAUC_r over the groups with both labels."""
    gaucs: np.ndarray
    estimate: float
    se: float
    groups: int


def gauc_contrast(labels, scores, weights, groups) -> GaucContrast:
    """A linear contrast of gAUCs on the same rows; groups (users) are the clusters.

    gAUC_r = sum_g n_g a_rg / sum_g n_g over eligible groups g, so the contrast is
    sum_g n_g x_g / sum_g n_g with x_g = sum_r w_r a_rg, and its variance is
    G / (G - 1) * sum_g n_g^2 (x_g - estimate)^2 / (sum_g n_g)^2.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.size != scores.shape[0]:
        raise ValueError(f"{weights.size} weights for {scores.shape[0]} score vectors")
    per_model = [metrics.per_group_auc(labels, s, groups) for s in scores]
    eligible = per_model[0][2]
    size = per_model[0][1][eligible]
    values = np.vstack([v[eligible] for v, _, _ in per_model])   # (k, G)
    g = int(eligible.sum())
    if g == 0:
        return GaucContrast(np.full(len(weights), np.nan), math.nan, math.nan, 0)
    gaucs = values @ size / size.sum()
    x = weights @ values
    estimate = float(weights @ gaucs)
    variance = (g / (g - 1) * np.sum(size ** 2 * (x - estimate) ** 2) / size.sum() ** 2) if g > 1 else math.nan
    return GaucContrast(gaucs, estimate, float(math.sqrt(variance)) if g > 1 else math.nan, g)


@dataclasses.dataclass
class PairedAuc:
    """AUC of candidate and baseline on the same rows, their difference and its interval."""
    baseline_auc: float
    candidate_auc: float
    diff: float
    se: float
    ci_low: float
    ci_high: float
    p_two_sided: float
    clicks: int
    rows: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _normal_interval(estimate: float, se: float, alpha: float):
    z = sps.norm.ppf(1 - alpha / 2)
    return estimate - z * se, estimate + z * se


def paired_auc(labels, baseline, candidate, clusters=None, alpha: float = 0.05) -> PairedAuc:
    """candidate - baseline AUC on the same rows, clustered-DeLong interval and p-value."""
    result = auc_contrast(labels, np.vstack([np.ravel(baseline), np.ravel(candidate)]), [-1.0, 1.0], clusters)
    p = two_sided_p(result.estimate, result.se)
    return PairedAuc(float(result.aucs[0]), float(result.aucs[1]), result.estimate, result.se,
                     *_normal_interval(result.estimate, result.se, alpha), p,
                     result.positives, result.positives + result.negatives)


@dataclasses.dataclass
class PairedGauc:
    """gAUC of candidate and baseline on the same rows (users as groups), their difference and its interval."""
    baseline_gauc: float
    candidate_gauc: float
    diff: float
    se: float
    ci_low: float
    ci_high: float
    p_two_sided: float
    clicks: int
    rows: int
    users: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_gauc(labels, baseline, candidate, users, alpha: float = 0.05) -> Optional[PairedGauc]:
    """candidate - baseline gAUC on the same rows with a user-clustered interval (gauc_contrast);
    None when no user has both a click and a non-click."""
    result = gauc_contrast(labels, np.vstack([np.ravel(baseline), np.ravel(candidate)]), [-1.0, 1.0], users)
    if result.groups == 0:
        return None
    return PairedGauc(float(result.gaucs[0]), float(result.gaucs[1]), result.estimate, result.se,
                      *_normal_interval(result.estimate, result.se, alpha), two_sided_p(result.estimate, result.se),
                      int(np.sum(labels)), int(np.size(labels)), result.groups)


def two_sided_p(estimate: float, se: float) -> float:
    """Normal two-sided p-value; with no spread (identical scores) 1 for a zero estimate, else 0."""
    if math.isnan(estimate) or math.isnan(se):
        return math.nan
    if se <= ROUND_OFF:
        return 1.0 if abs(estimate) <= ROUND_OFF else 0.0
    return float(2 * sps.norm.sf(abs(estimate) / se))


def p_worse_than(diff: float, se: float, tolerance: float) -> float:
    """One-sided p-value of H0: diff >= -tolerance (small = significantly worse by more)."""
    if math.isnan(diff) or math.isnan(se):
        return math.nan
    if se <= ROUND_OFF:
        return 0.0 if diff < -tolerance else 1.0
    return float(sps.norm.cdf((diff + tolerance) / se))


STATISTICS = {"auc": "AUC", "gauc": "gAUC"}  # a rule's statistic -> its name in reasons and tables


@dataclasses.dataclass(frozen=True)
class BlessingRule:
    """Thresholds of the noise-aware gate (the pipeline's and `crocodile model compare`'s defaults).

    A domain is refused only when its ``statistic`` is significantly lower (one-sided, Holm
    across domains, level ``alpha``) by more than ``domain_tolerance``; the whole eval set by
    more than ``overall_tolerance``. Domains with fewer than ``min_clicks`` eval clicks are
    "insufficient evidence", not tested (I: 30 clicks put the AUC standard error near 0.05,
    beyond which a test has no power against a 0.01 drop anyway).

    ``statistic``: ``auc``, the AUC pooled over the slice's rows, or ``gauc``, the per-user AUC
    weighted by rows (users with both a click and a non-click; users as clusters). Pooled AUC
    also rewards ranking one user's impressions against another's, which no request does;
    benchmarks/gate_metric_study.py measures which of the two tells the online lift.
    """
    domain_tolerance: float = 0.01
    overall_tolerance: float = 0.002
    alpha: float = 0.05
    min_clicks: int = 30
    statistic: str = "auc"

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"blessing statistic {self.statistic!r}: choose from {', '.join(STATISTICS)}")


def _paired_statistic(rule: BlessingRule, labels, baseline, candidate, clusters) -> Optional[Dict]:
    """The rule's paired contrast on these rows (JSON-ready), or None when gAUC has no eligible user."""
    paired = paired_auc if rule.statistic == "auc" else paired_gauc
    result = paired(labels, baseline, candidate, clusters, rule.alpha)
    return None if result is None else result.to_dict()


def blessing_decision(labels, baseline, candidate, domains, clusters=None,
                      rule: BlessingRule = BlessingRule(),
                      domain_ids: Optional[Sequence[int]] = None) -> Dict:
    """The gate's decision with every number behind it (JSON-ready).

    ``domain_ids`` lists the domains expected (those absent from the rows are reported
    as insufficient evidence); by default the domains present.
    """
    labels = np.asarray(labels).ravel().astype(np.int64)
    baseline, candidate = np.ravel(baseline), np.ravel(candidate)
    domains = np.asarray(domains).ravel().astype(np.int64)
    clusters = None if clusters is None else np.asarray(clusters).ravel()
    if rule.statistic == "gauc" and clusters is None:
        raise ValueError("a gAUC blessing rule needs the rows' users (clusters)")
    wanted = sorted(set(int(d) for d in (domain_ids if domain_ids is not None else np.unique(domains))))
    name = STATISTICS[rule.statistic]
    no_users = "no user with both a click and a non-click"

    overall = _paired_statistic(rule, labels, baseline, candidate, clusters)
    if overall is None:
        overall = {"clicks": int(labels.sum()), "rows": int(labels.size), "reason": no_users}
    overall_p = p_worse_than(overall.get("diff", math.nan), overall.get("se", math.nan), rule.overall_tolerance)
    per_domain: Dict[int, Dict] = {}
    tested: List[int] = []
    for d in wanted:
        rows = domains == d
        clicks, non_clicks = int(labels[rows].sum()), int(rows.sum() - labels[rows].sum())
        result = None
        if clicks >= rule.min_clicks and non_clicks > 0:
            result = _paired_statistic(rule, labels[rows], baseline[rows], candidate[rows],
                                       None if clusters is None else clusters[rows])
        if result is None:
            per_domain[d] = {"status": INSUFFICIENT, "clicks": clicks, "rows": int(rows.sum()),
                             "reason": f"{clicks} clicks < {rule.min_clicks} needed" if clicks < rule.min_clicks
                             else "no non-clicks" if non_clicks == 0 else no_users}
            continue
        per_domain[d] = {**result, "p_worse": p_worse_than(result["diff"], result["se"], rule.domain_tolerance)}
        tested.append(d)
    adjusted = holm([per_domain[d]["p_worse"] for d in tested]) if tested else []
    reasons = []
    for d, p_holm in zip(tested, adjusted):
        worse = bool(p_holm < rule.alpha)
        per_domain[d].update(p_worse_holm=float(p_holm), status="significantly worse" if worse else "ok")
        if worse:
            r = per_domain[d]
            reasons.append(f"domain {d}: {name} {r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] is "
                           f"significantly below -{rule.domain_tolerance} (Holm p = {p_holm:.3g})")
    overall_worse = not math.isnan(overall_p) and overall_p < rule.alpha
    if overall_worse:
        reasons.append(f"overall: {name} {overall['diff']:+.4f} [{overall['ci_low']:+.4f}, "
                       f"{overall['ci_high']:+.4f}] is significantly below -{rule.overall_tolerance} "
                       f"(p = {overall_p:.3g})")
    return {
        "blessed": not reasons,
        "reasons": reasons,
        "rule": dataclasses.asdict(rule),
        "statistic": rule.statistic,
        "overall": {**overall, "p_worse": overall_p,
                    "status": "significantly worse" if overall_worse else
                    INSUFFICIENT if "diff" not in overall else "ok"},
        "domains": {str(d): per_domain[d] for d in wanted},
        "insufficient_evidence": [d for d in wanted if per_domain[d]["status"] == INSUFFICIENT],
    }
