"""EDDA's domain-alignment pairs: similar users / items across domains from random walks.

EDDA (Ning et al., CIKM 2023) aligns the intra-domain embeddings of users (items) that
behave alike in different domains. Similarity comes from random walks on the user-item
interaction graph of the TRAINING data: a node's walks end on users, and two nodes of
different domains are similar when their walks end on the same overlapping users (users
seen in at least two domains, the anchors that both domains share).

Marks: (P) the paper / its code, (I) our reading where they are silent.
- Nodes are (entity, domain) pairs, and a walk stays in its start node's domain graph (I):
  the end-point counts then describe the node's neighbourhood in that domain, and the
  anchors are the coordinates every domain shares.
- User walks have 4 hops (user -> item -> user -> item -> user), item walks 3 hops
  (item -> user -> item -> user), 500 walks per node (P); both end on users.
- End-point counts over the overlapping users, cosine similarity, top-k cross-domain pairs
  per node (P: k = 1 or 3). Top-k is taken over the pooled other domains (I); ties break by
  (domain, id) (I); pairs with similarity 0 are dropped and a pair found from both ends is
  kept once (I).
- Edges are the clicked impressions by default (I: EDDA's graph holds positive
  interactions); `edges="impression"` uses every impression.
- At most `max_anchors` anchors, the most visited ones (I): bounds memory and time, which
  grow as (nodes of one domain) x (nodes of another) x anchors.

Everything is NumPy on integer id arrays, so the TFX Trainer (on the training split it
reads) and the offline benchmark (on its fit split) compute the same pairs.
"""
import dataclasses
from typing import Dict, Mapping, Optional

import numpy as np

USER, ITEM = "user", "item"
_ROW_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class AlignmentPairs:
    """Cross-domain pairs of one entity kind: (id_a in domain_a) ~ (id_b in domain_b)."""

    id_a: np.ndarray
    domain_a: np.ndarray
    id_b: np.ndarray
    domain_b: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.id_a)

    def as_set(self):
        """{((id_a, domain_a), (id_b, domain_b))} with the smaller end first (for comparisons)."""
        out = set()
        for ia, da, ib, db in zip(self.id_a, self.domain_a, self.id_b, self.domain_b):
            ends = sorted([(int(ia), int(da)), (int(ib), int(db))], key=lambda e: (e[1], e[0]))
            out.add(tuple(ends))
        return out


def _empty_pairs() -> AlignmentPairs:
    z = np.zeros(0, np.int64)
    return AlignmentPairs(z, z, z, z, np.zeros(0, np.float32))


class _DomainGraph:
    """One domain's bipartite graph in CSR form (local indices) with the global ids."""

    def __init__(self, users: np.ndarray, items: np.ndarray):
        edges = np.unique(np.stack([users, items], axis=1), axis=0)
        self.user_ids, user_local = np.unique(edges[:, 0], return_inverse=True)
        self.item_ids, item_local = np.unique(edges[:, 1], return_inverse=True)
        self.user_indptr, self.user_nbrs = self._csr(user_local, item_local, len(self.user_ids))
        self.item_indptr, self.item_nbrs = self._csr(item_local, user_local, len(self.item_ids))

    @staticmethod
    def _csr(source: np.ndarray, target: np.ndarray, num_nodes: int):
        order = np.argsort(source, kind="stable")
        indptr = np.zeros(num_nodes + 1, np.int64)
        np.cumsum(np.bincount(source, minlength=num_nodes), out=indptr[1:])
        return indptr, target[order]

    def walk_end_users(self, start_kind: str, hops: int, walks_per_node: int, rng) -> np.ndarray:
        """Local user index where each walk ends, shape (starts, walks_per_node). Every node
        has an edge, so each hop moves to a uniformly drawn neighbour."""
        num = len(self.user_ids) if start_kind == USER else len(self.item_ids)
        current = np.repeat(np.arange(num), walks_per_node)
        on_user = start_kind == USER
        for _ in range(hops):
            indptr, nbrs = (self.user_indptr, self.user_nbrs) if on_user else (self.item_indptr, self.item_nbrs)
            degree = indptr[current + 1] - indptr[current]
            current = nbrs[indptr[current] + (rng.random(len(current)) * degree).astype(np.int64)]
            on_user = not on_user
        if not on_user:
            raise ValueError(f"a {start_kind} walk of {hops} hops ends on an item; it must end on a user")
        return current.reshape(num, walks_per_node)


def endpoint_counts(end_users: np.ndarray, anchor_index: np.ndarray, num_anchors: int) -> np.ndarray:
    """(starts, walks) local end users -> (starts, anchors) float32 counts; `anchor_index`
    maps a local user to its anchor column or -1 (not an anchor: not counted)."""
    columns = anchor_index[end_users]
    rows = np.repeat(np.arange(end_users.shape[0]), end_users.shape[1])
    keep = columns.reshape(-1) >= 0
    flat = rows[keep] * num_anchors + columns.reshape(-1)[keep]
    counts = np.bincount(flat, minlength=end_users.shape[0] * num_anchors)
    return counts.reshape(end_users.shape[0], num_anchors).astype(np.float32)


def _unit_rows(counts: np.ndarray) -> np.ndarray:
    norms = np.sqrt((counts.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (counts / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def top_k_cross_domain(counts: Mapping[int, np.ndarray], ids: Mapping[int, np.ndarray], top_k: int) -> AlignmentPairs:
    """Cosine similarity of end-point count rows between every two domains; each node keeps
    its top_k most similar nodes of the other domains (similarity > 0); a pair found from
    both ends is kept once. counts[d]: (nodes of d, anchors); ids[d]: their global ids."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    domains = sorted(counts)
    unit = {d: _unit_rows(counts[d]) for d in domains}
    found = {}
    for da in domains:
        others = [db for db in domains if db != da and len(ids[db])]
        if not len(ids[da]) or not others:
            continue
        # Candidates ordered by (domain, id): a stable sort then breaks ties that way.
        cand_unit = np.concatenate([unit[db] for db in others])
        cand_dom = np.concatenate([np.full(len(ids[db]), db) for db in others])
        cand_id = np.concatenate([ids[db] for db in others])
        k = min(top_k, len(cand_id))
        for start in range(0, len(ids[da]), _ROW_CHUNK):
            sim = unit[da][start:start + _ROW_CHUNK] @ cand_unit.T                 # (chunk, candidates)
            best = np.argsort(-sim, axis=1, kind="stable")[:, :k]
            for row, cols in enumerate(best):
                for col in cols:
                    value = float(sim[row, col])
                    if value <= 0:
                        continue
                    a = (int(ids[da][start + row]), int(da))
                    b = (int(cand_id[col]), int(cand_dom[col]))
                    key = (a, b) if (a[1], a[0]) <= (b[1], b[0]) else (b, a)
                    found[key] = value
    if not found:
        return _empty_pairs()
    keys = sorted(found, key=lambda kv: (kv[0][1], kv[0][0], kv[1][1], kv[1][0]))
    return AlignmentPairs(
        id_a=np.array([k[0][0] for k in keys], np.int64), domain_a=np.array([k[0][1] for k in keys], np.int64),
        id_b=np.array([k[1][0] for k in keys], np.int64), domain_b=np.array([k[1][1] for k in keys], np.int64),
        similarity=np.array([found[k] for k in keys], np.float32))


def alignment_pairs(user_ids, item_ids, domain_ids, walks_per_node: int = 500, user_walk_length: int = 4,
                    item_walk_length: int = 3, top_k: int = 1, max_anchors: Optional[int] = 2048,
                    seed: int = 0) -> Dict[str, AlignmentPairs]:
    """{'user': pairs, 'item': pairs} from the interactions (user_ids[j], item_ids[j]) in
    domain domain_ids[j] (integer arrays of one length; pass the training split only)."""
    users, items, domains = (np.asarray(a).reshape(-1) for a in (user_ids, item_ids, domain_ids))
    if not (len(users) == len(items) == len(domains)):
        raise ValueError(f"user, item and domain id arrays differ in length: {len(users)}, {len(items)}, {len(domains)}")
    for name, arr in (("user", users), ("item", items), ("domain", domains)):
        if len(arr) and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} ids must be integers, got dtype {arr.dtype}")
    if walks_per_node < 1:
        raise ValueError(f"walks_per_node must be >= 1, got {walks_per_node}")
    if user_walk_length % 2 or item_walk_length % 2 == 0:
        raise ValueError("user walks need an even and item walks an odd number of hops (both end on users), "
                         f"got {user_walk_length} and {item_walk_length}")
    rng = np.random.default_rng(seed)
    graphs = {int(d): _DomainGraph(users[domains == d], items[domains == d]) for d in np.unique(domains)}
    # Anchors: users with edges in at least two domains.
    seen = np.concatenate([g.user_ids for g in graphs.values()]) if graphs else np.zeros(0, np.int64)
    unique_users, domain_count = np.unique(seen, return_counts=True)
    anchors = unique_users[domain_count >= 2]
    if len(anchors) == 0:
        return {USER: _empty_pairs(), ITEM: _empty_pairs()}

    ends = {kind: {d: g.walk_end_users(kind, hops, walks_per_node, rng) for d, g in graphs.items()}
            for kind, hops in ((USER, user_walk_length), (ITEM, item_walk_length))}
    if max_anchors is not None and len(anchors) > max_anchors:
        visits = np.zeros(len(anchors), np.int64)
        for kind in ends:
            for d, g in graphs.items():
                pos = np.searchsorted(anchors, g.user_ids)
                is_anchor = (pos < len(anchors)) & (anchors[np.minimum(pos, len(anchors) - 1)] == g.user_ids)
                hits = ends[kind][d].reshape(-1)
                np.add.at(visits, pos[hits][is_anchor[hits]], 1)
        anchors = np.sort(anchors[np.argsort(-visits, kind="stable")[:max_anchors]])

    result = {}
    for kind in (USER, ITEM):
        counts, ids = {}, {}
        for d, g in graphs.items():
            pos = np.searchsorted(anchors, g.user_ids)
            is_anchor = (pos < len(anchors)) & (anchors[np.minimum(pos, len(anchors) - 1)] == g.user_ids)
            anchor_index = np.where(is_anchor, pos, -1)
            counts[d] = endpoint_counts(ends[kind][d], anchor_index, len(anchors))
            ids[d] = g.user_ids if kind == USER else g.item_ids
        result[kind] = top_k_cross_domain(counts, ids, top_k)
    return result
