"""Paired model comparison over seeds and over the same eval rows.

For a reference model R and a model X, both trained with seeds 1..S and scored on the
same eval rows, the estimate is the mean over seeds of AUC(R_s) - AUC(X_s) (likewise
gAUC). Two sources of noise are in it, and the interval has both:

- eval rows: the same rows serve every seed, so their sampling error does not average
  out over seeds; its variance is that of the seed-averaged contrast with users as
  clusters (crocodile.model.comparison: clustered DeLong for AUC, the linearised
  ratio-estimator variance for gAUC);
- training: the spread of the per-seed differences, divided by S.

The 95% interval is estimate +- 1.96 * sqrt(both). Per domain, the two-sided p-values
are Holm-adjusted across domains (per model and metric); a model is called better or
worse on a scope only where that adjusted p is below 0.05, which implies the interval
excludes 0.
"""
import math
from typing import Dict, List, Sequence

import numpy as np
from scipy import stats as sps

from crocodile.model.comparison import auc_contrast, gauc_contrast, two_sided_p
from crocodile.model.multiple_testing import holm

ALPHA = 0.05


def _contrast(metric: str, labels, reference: List[np.ndarray], other: List[np.ndarray], users) -> Dict:
    seeds = min(len(reference), len(other))
    if seeds == 0:
        return {}
    reference, other = reference[:seeds], other[:seeds]
    scores = np.vstack(reference + other)
    weights = np.concatenate([np.full(seeds, 1.0 / seeds), np.full(seeds, -1.0 / seeds)])
    if metric == "auc":
        result = auc_contrast(labels, scores, weights, clusters=users)
        values = result.aucs
    else:
        result = gauc_contrast(labels, scores, weights, users)
        values = result.gaucs
    per_seed = values[:seeds] - values[seeds:]
    seed_var = float(np.var(per_seed, ddof=1)) / seeds if seeds > 1 else math.nan
    eval_var = result.se ** 2
    se = math.sqrt(eval_var + seed_var) if seeds > 1 else result.se
    z = sps.norm.ppf(1 - ALPHA / 2)
    p = two_sided_p(result.estimate, se)
    return {"diff": result.estimate, "ci": [result.estimate - z * se, result.estimate + z * se], "se": se,
            "se_eval_rows": result.se, "se_seeds": math.sqrt(seed_var) if seeds > 1 else math.nan,
            "per_seed": per_seed.tolist(), "seeds": seeds, "p": p}


def _verdict(entry: Dict) -> str:
    p = entry.get("p_holm", entry.get("p"))
    if p is None or not math.isfinite(p) or p >= ALPHA:
        return "tie"
    return "better" if entry["diff"] > 0 else "worse"


def paired_summary(predictions: Dict[str, List[np.ndarray]], reference: str, labels, users, domains,
                   metrics: Sequence[str] = ("auc", "gauc")) -> Dict:
    """{model: {metric: {scope: {...}}}} for reference - model; verdicts say how the reference fares."""
    labels, users, domains = np.asarray(labels), np.asarray(users), np.asarray(domains)
    domain_ids = [int(d) for d in np.unique(domains)]
    out = {"reference": reference, "difference": f"{reference} - model", "alpha": ALPHA,
           "multiple_comparison": "Holm across domains, per model and metric", "models": {}}
    for model, preds in predictions.items():
        if model == reference or not preds or not predictions.get(reference):
            continue
        per_metric = {}
        for metric in metrics:
            scopes = {"overall": _contrast(metric, labels, predictions[reference], preds, users)}
            for d in domain_ids:
                rows = domains == d
                scopes[str(d)] = _contrast(metric, labels[rows], [p[rows] for p in predictions[reference]],
                                           [p[rows] for p in preds], users[rows])
            adjusted = holm([scopes[str(d)].get("p", math.nan) for d in domain_ids])
            for d, p in zip(domain_ids, adjusted):
                scopes[str(d)]["p_holm"] = float(p)
            for entry in scopes.values():
                if entry:
                    entry["verdict"] = _verdict(entry)
            per_metric[metric] = scopes
        out["models"][model] = per_metric
    return out
