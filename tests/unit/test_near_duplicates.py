"""Near-duplicate search: the multi-index search finds exactly the pairs the all-pairs scan finds."""

import numpy as np
import pandas as pd
import pytest

from data.near_duplicates import _ranges, naive_pairs, near_groups, near_pairs
from data.prepare import assign_splits
from lensops.core.settings import PrepareSettings


def hashes_with_near_copies(n: int = 3000, copies: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    picked = base[rng.integers(0, n, copies)]
    flips = np.zeros(copies, dtype=np.uint64)
    for k in range(copies):
        for bit in rng.choice(64, int(rng.integers(0, 9)), replace=False):
            flips[k] |= np.uint64(1) << np.uint64(int(bit))
    return np.concatenate([base, picked ^ flips, base[:5]])  # near copies, and exact ones


@pytest.mark.parametrize("distance", [0, 1, 4, 6, 10])
def test_multi_index_search_finds_every_pair_the_naive_scan_finds(distance):
    hashes = hashes_with_near_copies()
    assert np.array_equal(near_pairs(hashes, distance), naive_pairs(hashes, distance))


def test_ranges_cover_the_64_bits_once():
    for d in range(0, 17):
        ranges = _ranges(d)
        assert len(ranges) == d + 1 and sum(w for _, w in ranges) == 64
        assert [s for s, _ in ranges] == list(np.cumsum([0, *[w for _, w in ranges][:-1]]))


def test_groups_are_connected_and_missing_hashes_stand_alone():
    a, b, c, far = "0000000000000000", "0000000000000007", "000000000000003f", "ffffffffffffffff"
    ids = near_groups([a, b, c, far, None, None], max_distance=3)
    assert ids[0] == ids[1] == ids[2]  # a~b (3 bits), b~c (3 bits): one group, though a and c are 6 apart
    assert len({ids[0], ids[3], ids[4], ids[5]}) == 4


def test_a_near_group_lands_in_one_split():
    rows = [{"path": f"x/{i}.png", "label": "x", "sha256": f"{i:064x}"} for i in range(200)]
    manifest = pd.DataFrame(rows)
    near = pd.Series(np.arange(200))
    near[[3, 50, 120, 199]] = 3  # four files of one picture
    splits = assign_splits(manifest, PrepareSettings(), near)
    assert splits[[3, 50, 120, 199]].nunique() == 1
    # without near groups the split is the one by sha256 alone, as before
    assert assign_splits(manifest, PrepareSettings()).equals(assign_splits(manifest, PrepareSettings(), None))
