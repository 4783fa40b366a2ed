"""Diagnostics the Crocodile paper uses to explain its gains (plain dicts, JSON-ready).

- Information abundance IA(E) = sum of singular values / largest singular value of an
  embedding matrix (Guo et al. 2023): low IA = dimensional collapse. Computed per
  embedding set (an (rows, e) slice of the wide table), overall, per domain (the item rows
  seen in that domain's training data) and per item-frequency group.
- Per-expert output statistics: mean, standard deviation, the fraction of dead units
  (output dimensions that are 0 on every row; experts end in ReLU) and the IA of each
  expert's (rows, d) output matrix (the paper's expert-level collapse, Fig. 2a).
- The cross-expert covariance of DESIGN 5.3 on every given row (not a 32-row sample): the
  quantity the covariance loss is meant to lower, measured on validation data.
"""
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from crocodile.model.features import ITEM_KEY
from crocodile.model.hparams import EXPERT_OUTPUTS

FREQUENCY_GROUPS = ("head", "torso", "tail")   # thirds of the seen items by training count


def information_abundance(matrix: np.ndarray) -> float:
    """||sigma(E)||_1 / ||sigma(E)||_inf; NaN for an empty or all-zero matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.size == 0:
        return float("nan")
    singular = np.linalg.svd(matrix, compute_uv=False)
    if singular[0] <= 0:
        return float("nan")
    return float(singular.sum() / singular[0])


def _mean_ia_over_sets(table: np.ndarray, rows: np.ndarray, num_sets: int) -> float:
    """Mean IA of the `num_sets` (len(rows), e) slices of a wide (vocab, M*e) table."""
    if len(rows) < 2:
        return float("nan")
    selected = table[rows]
    dim = table.shape[1] // num_sets
    return float(np.mean([information_abundance(selected[:, m * dim:(m + 1) * dim]) for m in range(num_sets)]))


def frequency_groups(item_ids: np.ndarray) -> Dict[str, np.ndarray]:
    """Item rows seen in training split into head / torso / tail thirds by impression count."""
    ids, counts = np.unique(item_ids, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    return {name: part for name, part in zip(FREQUENCY_GROUPS, np.array_split(order, 3))}


def embedding_diagnostics(network, train_arrays: Optional[Mapping[str, np.ndarray]] = None,
                          domain_key: str = "domain_id_xf") -> dict:
    """IA per categorical table (mean over embedding sets), and for the item table per
    domain and per frequency group when the training arrays are given."""
    num_sets = network.num_embedding_sets
    tables = {k: v.numpy() for k, v in network.embedding_tables.items()}
    result = {"num_embedding_sets": num_sets,
              "overall": {k: _mean_ia_over_sets(t, np.arange(len(t)), num_sets) for k, t in tables.items()}}
    item_key = ITEM_KEY + "_xf"
    if train_arrays is not None and ITEM_KEY in tables and item_key in train_arrays:
        items, domains = np.asarray(train_arrays[item_key]), np.asarray(train_arrays[domain_key])
        table = tables[ITEM_KEY]
        result["item_by_domain"] = {
            str(s): _mean_ia_over_sets(table, np.unique(items[domains == s]), num_sets)
            for s in range(network.num_domains)}
        result["item_by_frequency"] = {
            name: _mean_ia_over_sets(table, rows, num_sets) for name, rows in frequency_groups(items).items()}
    return result


def expert_statistics(expert_outputs: np.ndarray, dead_threshold: float = 0.0) -> Optional[dict]:
    """Per expert: mean and std of its outputs, and the fraction of output dimensions that
    never exceed `dead_threshold` on any row (dead ReLU units). expert_outputs (N, M, d)."""
    if expert_outputs is None:
        return None
    outputs = np.asarray(expert_outputs, dtype=np.float64)
    alive = (outputs > dead_threshold).any(axis=0)              # (M, d)
    return {
        "mean": outputs.mean(axis=(0, 2)).tolist(),
        "std": outputs.std(axis=(0, 2)).tolist(),
        "dead_fraction": (1.0 - alive.mean(axis=1)).tolist(),
        "unit_std": outputs.std(axis=0).mean(axis=1).tolist(),    # mean over units of each unit's std
        "information_abundance": [information_abundance(outputs[:, m, :]) for m in range(outputs.shape[1])],
        "cross_expert_covariance": cross_expert_covariance(outputs),
    }


def cross_expert_covariance(expert_outputs: np.ndarray) -> float:
    """(1/d^2) sum_{p<q} sum_ij |C_pq[i, j]| over all N rows, C = centred O_p^T O_q / (N-1),
    in float64 (the covariance loss's definition, without its row sampling)."""
    outputs = np.asarray(expert_outputs, dtype=np.float64)
    n, num_experts, dim = outputs.shape
    if n < 2:
        return float("nan")
    z = (outputs - outputs.mean(axis=0)).reshape(n, num_experts * dim)
    gram = np.abs(z.T @ z) / (n - 1)
    within = sum(gram[m * dim:(m + 1) * dim, m * dim:(m + 1) * dim].sum() for m in range(num_experts))
    return float((gram.sum() - within) / 2.0 / dim ** 2)


def network_expert_statistics(network, feature_batches: Sequence[Mapping[str, np.ndarray]]) -> Optional[dict]:
    """Expert statistics of `network` over the given feature batches (None without experts)."""
    outputs = []
    for features in feature_batches:
        result = network(features, training=False)
        if EXPERT_OUTPUTS not in result:
            return None
        outputs.append(result[EXPERT_OUTPUTS].numpy())
    return expert_statistics(np.concatenate(outputs)) if outputs else None
