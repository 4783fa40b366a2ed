"""`crocodile data describe`: per-domain statistics of a data folder.

Per domain and overall: impressions, distinct users and items, CTR, purchase rate, and,
for a generated world, the oracle AUC / gAUC, i.e. what a model scoring with the true
click probabilities (ground_truth p_click, position effect included) would get.
"""
import math
import os
from typing import Dict

import numpy as np

from crocodile.errors import UserError
from crocodile.model import features, metrics
from crocodile.simulation import dataset


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

    oracle = None
    if os.path.isdir(os.path.join(data_dir, dataset.GROUND_TRUTH_DIR)):
        truth = dataset.read_ground_truth(data_dir, [features.REQUEST_ID_KEY, features.POSITION_KEY, "p_click"])
        aligned = (len(truth["p_click"]) == len(labels)
                   and np.array_equal(truth[features.REQUEST_ID_KEY], logs[features.REQUEST_ID_KEY])
                   and np.array_equal(truth[features.POSITION_KEY], logs[features.POSITION_KEY]))
        if not aligned:
            raise UserError(f"{data_dir}: ground_truth rows do not match the logs (request_id, position)")
        oracle = metrics.per_domain_metrics(labels, truth["p_click"], users, domains)

    def block(mask, oracle_part):
        row = {
            "impressions": int(mask.sum()),
            "users": int(len(np.unique(users[mask]))),
            "items": int(len(np.unique(items[mask]))),
            "ctr": float(labels[mask].mean()) if mask.any() else math.nan,
            "purchase_rate": float(purchase[mask].mean()) if purchase is not None and mask.any() else None,
        }
        if oracle_part is not None:
            row.update({"oracle_auc": oracle_part["auc"], "oracle_gauc": oracle_part["gauc"],
                        "gauc_eligible_users": oracle_part["n_eligible_users"]})
        return row

    everything = np.ones(len(labels), dtype=bool)
    result = {"data_dir": os.path.abspath(data_dir), "format": "tfrecord" if files[0].endswith(".gz") else "csv",
              "overall": block(everything, oracle["overall"] if oracle else None), "domains": {}}
    for d in np.unique(domains):
        result["domains"][int(d)] = block(domains == d, oracle["domains"][int(d)] if oracle else None)
    return result


def format_table(summary: Dict) -> str:
    has_oracle = "oracle_auc" in summary["overall"]
    header = ["domain", "impressions", "share", "users", "items", "CTR", "purchase/imp"]
    if has_oracle:
        header += ["oracle AUC", "oracle gAUC", "gAUC users"]
    total = summary["overall"]["impressions"]
    rows = []
    for name, row in [*summary["domains"].items(), ("all", summary["overall"])]:
        cells = [str(name), f"{row['impressions']:,}", f"{row['impressions'] / max(total, 1):.1%}",
                 f"{row['users']:,}", f"{row['items']:,}", f"{row['ctr']:.4f}",
                 "-" if row["purchase_rate"] is None else f"{row['purchase_rate']:.5f}"]
        if has_oracle:
            cells += [f"{row['oracle_auc']:.4f}", f"{row['oracle_gauc']:.4f}", f"{row['gauc_eligible_users']:,}"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [f"{summary['data_dir']} ({summary['format']})",
             "  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if has_oracle:
        lines.append("oracle = scores are the true click probabilities (ground_truth/p_click, position included)")
    return "\n".join(lines)
