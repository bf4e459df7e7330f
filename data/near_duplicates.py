"""Near-duplicate images: groups of images whose perceptual hashes are within a Hamming distance.

Two images are near copies when their 64-bit pHashes (`data.quality`) differ in at most
`max_distance` bits; a group is a connected set of near copies, so a copy of a copy joins its
group (that is what keeps a split leak-free: no near pair can end up on both sides).

The search is not all-pairs. By the pigeonhole principle, two 64-bit hashes that differ in at
most d bits agree exactly on at least one of d + 1 disjoint bit ranges (multi-index hashing).
So, for each of the d + 1 ranges, the hashes are sorted by that range, only hashes sharing a
value there are compared, and their full distance is checked. On hashes of unrelated images a
range of 64 / (d + 1) bits holds few equal values, so the work grows about linearly with the
number of images instead of quadratically (see `benchmarks/near_duplicates.py`).
"""

from __future__ import annotations

import numpy as np

HASH_BITS = 64


def hash_array(hex_hashes) -> np.ndarray:
    """16-hex-digit hashes -> uint64 array."""
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


def _ranges(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 disjoint bit ranges covering the 64 bits."""
    n = max_distance + 1
    widths = [HASH_BITS // n + (1 if i < HASH_BITS % n else 0) for i in range(n)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths, strict=True)]


def _pairs_sharing(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j by position) of equal keys."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    firsts, seconds = [], []
    for gap in range(1, int(sizes.max(initial=1))):
        # pairs `gap` apart inside a run of equal keys: position p and p + gap
        same = sorted_keys[:-gap] == sorted_keys[gap:]
        if not same.any():
            break
        p = np.flatnonzero(same)
        firsts.append(order[p])
        seconds.append(order[p + gap])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _distinct_pairs(unique: np.ndarray, max_distance: int) -> np.ndarray:
    """(k, 2) index pairs i < j of distinct hashes within `max_distance` bits, by multi-index search."""
    found = [np.empty((0, 2), np.int64)]
    for shift, width in _ranges(max_distance):
        keys = (unique >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        a, b = _pairs_sharing(keys)
        close = np.bitwise_count(unique[a] ^ unique[b]) <= max_distance
        found.append(np.stack([np.minimum(a, b)[close], np.maximum(a, b)[close]], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """(k, 2) index pairs i < j of hashes within `max_distance` bits (equal hashes included)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    unique, inverse = np.unique(hashes, return_inverse=True)
    pairs = _distinct_pairs(unique, max_distance)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(unique) + 1))
    out = [np.empty((0, 2), np.int64)]
    for u in np.flatnonzero(np.diff(starts) > 1):  # images sharing one hash value
        m = order[starts[u] : starts[u + 1]]
        i, j = np.triu_indices(len(m), 1)
        out.append(np.stack([m[i], m[j]], axis=1))
    for a, b in pairs:
        ma, mb = order[starts[a] : starts[a + 1]], order[starts[b] : starts[b + 1]]
        out.append(np.stack(np.meshgrid(ma, mb, indexing="ij"), axis=-1).reshape(-1, 2))
    return np.unique(np.sort(np.concatenate(out), axis=1), axis=0)


def naive_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> np.ndarray:
    """The all-pairs baseline (vectorised, in blocks): every pair's distance is computed."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    out = []
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        out.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(out) if out else np.empty((0, 2), np.int64)


def group_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pairs: one group id per item (singletons get their own)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def near_groups(hex_hashes, max_distance: int) -> np.ndarray:
    """Group id per hash; hashes that are missing (None/NA) are each a group of their own."""
    values = list(hex_hashes)
    present = np.array([isinstance(h, str) and len(h) > 0 for h in values], dtype=bool)
    ids = np.arange(len(values), dtype=np.int64) + len(values)  # distinct ids for the missing
    idx = np.flatnonzero(present)
    if len(idx):
        unique, inverse = np.unique(hash_array([values[i] for i in idx]), return_inverse=True)
        ids[idx] = group_ids(len(unique), _distinct_pairs(unique, max_distance))[inverse]
    return ids
