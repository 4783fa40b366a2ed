"""`crocodile data describe`: per-domain statistics of a data folder.

Per domain and overall: impressions, distinct users and items, the median impressions per
active user (and the expected median in the pipeline's training split), CTR, purchase rate,
and, for a generated world, two oracles on the same rows:

- the ceiling: AUC / gAUC of the true position-free relevance (ground_truth p_relevance),
  the best a model that does not see position can do;
- the p_click oracle: the true click probability, position effect included, which no
  model here can reach because none sees position.
"""
import math
import os
from typing import Dict

import numpy as np

from crocodile.errors import UserError
from crocodile.model import features, metrics
from crocodile.simulation import dataset

# Share of rows the pipeline trains on (its hash split is 4 train : 1 eval buckets).
TRAIN_SHARE = 0.8


def describe(data_dir: str) -> Dict:
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: no such data folder")
    wanted = [features.USER_KEY, features.ITEM_KEY, features.DOMAIN_KEY, features.LABEL_KEY]
    files = dataset.log_files(data_dir)
    logs = dataset.read_logs(data_dir)
    missing = [c for c in wanted if c not in logs]
    if missing:
        raise UserError(f"{files[0]}: missing column(s) {missing}")
    labels, domains = logs[features.LABEL_KEY].astype(np.int64), logs[features.DOMAIN_KEY].astype(np.int64)
    users, items = logs[features.USER_KEY], logs[features.ITEM_KEY]
    purchase = logs.get(features.PURCHASE_KEY)

    oracle = ceiling = None
    if os.path.isdir(os.path.join(data_dir, dataset.GROUND_TRUTH_DIR)):
        truth = dataset.read_ground_truth(data_dir, [features.REQUEST_ID_KEY, features.POSITION_KEY, "p_click",
                                                     "p_relevance"])
        aligned = (len(truth["p_click"]) == len(labels)
                   and np.array_equal(truth[features.REQUEST_ID_KEY], logs[features.REQUEST_ID_KEY])
                   and np.array_equal(truth[features.POSITION_KEY], logs[features.POSITION_KEY]))
        if not aligned:
            raise UserError(f"{data_dir}: ground_truth rows do not match the logs (request_id, position)")
        oracle = metrics.per_domain_metrics(labels, truth["p_click"], users, domains)
        ceiling = metrics.per_domain_metrics(labels, truth["p_relevance"], users, domains)

    def block(mask, scope):
        per_user = np.unique(users[mask], return_counts=True)[1]
        median = float(np.median(per_user)) if per_user.size else math.nan
        row = {
            "impressions": int(mask.sum()),
            "users": int(per_user.size),
            "items": int(len(np.unique(items[mask]))),
            "median_impressions_per_user": median,
            "median_train_impressions_per_user": TRAIN_SHARE * median,
            "ctr": float(labels[mask].mean()) if mask.any() else math.nan,
            "purchase_rate": float(purchase[mask].mean()) if purchase is not None and mask.any() else None,
        }
        if oracle is not None:
            part = oracle["overall"] if scope is None else oracle["domains"][scope]
            top = ceiling["overall"] if scope is None else ceiling["domains"][scope]
            row.update({"ceiling_auc": top["auc"], "ceiling_gauc": top["gauc"],
                        "oracle_auc": part["auc"], "oracle_gauc": part["gauc"],
                        "gauc_eligible_users": part["n_eligible_users"]})
        return row

    everything = np.ones(len(labels), dtype=bool)
    result = {"data_dir": os.path.abspath(data_dir), "format": "tfrecord" if files[0].endswith(".gz") else "csv",
              "overall": block(everything, None), "domains": {}}
    if oracle is not None:
        result["ceiling"] = "ceiling_* = true position-free relevance p_relevance: the best a position-blind model can do"
        result["oracle"] = "oracle_* = true p_click, position effect included (no model here sees position)"
    for d in np.unique(domains):
        result["domains"][int(d)] = block(domains == d, int(d))
    return result


def format_table(summary: Dict) -> str:
    has_oracle = "oracle_auc" in summary["overall"]
    header = ["domain", "impressions", "share", "users", "med. train imp/user", "items", "CTR", "purchase/imp"]
    if has_oracle:
        header += ["ceiling AUC", "ceiling gAUC", "p_click AUC", "p_click gAUC", "gAUC users"]
    total = summary["overall"]["impressions"]
    rows = []
    for name, row in [*summary["domains"].items(), ("all", summary["overall"])]:
        cells = [str(name), f"{row['impressions']:,}", f"{row['impressions'] / max(total, 1):.1%}",
                 f"{row['users']:,}", f"{row['median_train_impressions_per_user']:.0f}",
                 f"{row['items']:,}", f"{row['ctr']:.4f}",
                 "-" if row["purchase_rate"] is None else f"{row['purchase_rate']:.5f}"]
        if has_oracle:
            cells += [f"{row['ceiling_auc']:.4f}", f"{row['ceiling_gauc']:.4f}", f"{row['oracle_auc']:.4f}",
                      f"{row['oracle_gauc']:.4f}", f"{row['gauc_eligible_users']:,}"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [f"{summary['data_dir']} ({summary['format']})",
             "  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if has_oracle:
        lines.append("ceiling = true position-free relevance (ground_truth/p_relevance): the best a model that does not "
                     "see position can do")
        lines.append("p_click = true click probability, position effect included (above the ceiling; no model here "
                     "sees position)")
        lines.append(f"med. train imp/user = {TRAIN_SHARE:.0%} of the median impressions per active user "
                     f"(the pipeline's train share)")
    return "\n".join(lines)
