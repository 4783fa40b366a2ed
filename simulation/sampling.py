"""Exact, fast building blocks of the world's candidate sampling (crocodile.simulation.world).

Candidate sampling draws 3k popularity-weighted items per request and keeps the first k
distinct ones: millions of draws per A/B run. A binary search per draw and two row-wise
argsorts per request were a sixth of the offline A/B's time; these give the same arrays
(tests/simulation/test_world.py compares them with the direct computation) in less.
"""
import numpy as np

# Buckets of the inverse-CDF table: a power of two, so u * buckets is exact and floor(u * buckets)
# names the bucket of u without rounding error. (I) 2^16: 512 KiB per CDF, and with the worlds'
# Zipf popularity over a few thousand items at most a few CDF points share a bucket.
_BUCKETS = 1 << 16


class InverseCdf:
    """`np.searchsorted(cdf, u, side="right")` for u in [0, 1), by a bucket table.

    start[b] counts the CDF points <= b / B, a lower bound of the answer for any u in bucket b;
    the answer exceeds it by at most the number of points inside the bucket, so that many
    vectorised steps `index += cdf[index] <= u` reach it exactly (the CDF is sorted).
    """

    def __init__(self, cdf: np.ndarray, buckets: int = _BUCKETS):
        self._cdf = np.append(np.asarray(cdf, np.float64), np.inf)  # the sentinel ends every walk
        self._buckets = buckets
        self._start = np.searchsorted(self._cdf[:-1], np.arange(buckets + 1) / buckets, side="right")
        self._steps = int(np.diff(self._start).max())

    def __call__(self, u: np.ndarray) -> np.ndarray:
        index = self._start[(u * self._buckets).astype(np.int64)]
        for _ in range(self._steps):
            index += self._cdf[index] <= u
        return index


def first_distinct(draws: np.ndarray, k: int, num_values: int):
    """(chosen [n, k], complete [n], is_first [n, m]): each row's first k distinct values in draw order.

    `draws` [n, m] holds integers in [0, num_values); is_first marks each value's first draw in
    its row. Rows with fewer than k distinct values are not complete and their chosen rows
    are zeros (the caller tops them up from `draws[row][is_first[row]]`).
    A value is first where its column is the smallest column holding it in the row: writing
    the column numbers into a [rows, values] table from the last column to the first leaves
    each value's first column (one column at a time, so no two writes of one step collide).
    """
    n, m = draws.shape
    is_first = np.empty((n, m), bool)
    block = max(1, (1 << 22) // max(num_values, 1))  # rows per table: at most 4M cells, reused
    first_column = np.empty(min(n, block) * num_values, np.min_scalar_type(max(m - 1, 0)))
    columns = np.arange(m)
    for start in range(0, n, block):
        part = draws[start:start + block]
        cell = np.arange(part.shape[0])[:, None] * num_values + part  # flat [row, value] cell
        for column in range(m - 1, -1, -1):
            first_column[cell[:, column]] = column
        is_first[start:start + block] = first_column[cell] == columns
    rank = np.cumsum(is_first.view(np.uint8), axis=1, dtype=np.min_scalar_type(m))
    complete = rank[:, -1] >= k
    chosen = np.zeros((n, k), draws.dtype)
    chosen[complete] = draws[complete][(is_first & (rank <= k))[complete]].reshape(-1, k)
    return chosen, complete, is_first
