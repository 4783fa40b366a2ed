"""Multiple-comparison corrections shared by every per-domain decision.

The A/B report (crocodile.simulation.stats), the offline model comparison and the
pipeline's blessing gate (crocodile.model.comparison) all test one hypothesis per domain;
they adjust with the same two functions so that "significant" means the same everywhere.
"""
import numpy as np


def _ascending(p_values):
    """(p, NaN-filled output, indices of the non-NaN p-values in ascending order)."""
    p = np.asarray(p_values, np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    return p, np.full(p.shape, np.nan), valid[np.argsort(p[valid])]


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control). NaNs are left out."""
    p, out, order = _ascending(p_values)
    m = order.size
    out[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false-discovery rate). NaNs are left out."""
    p, out, order = _ascending(p_values)
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out
