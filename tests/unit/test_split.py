"""Splits: deterministic, stratified, and no identical image on both sides of a split."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from data.prepare import _cut, assign_splits
from lensops.core.settings import PrepareSettings


def fake_manifest(per_class: dict[str, int], dup_every: int = 0, seed: int = 0) -> pd.DataFrame:
    rows = []
    for label, n in per_class.items():
        for i in range(n):
            content = f"{label}-{i // dup_every if dup_every else i}"
            rows.append(
                {"path": f"{label}/{i}.png", "label": label, "sha256": hashlib.sha256(content.encode()).hexdigest()}
            )
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True) if seed else frame


CFG = PrepareSettings()


def test_same_seed_same_split_whatever_the_row_order():
    a = fake_manifest({"x": 100, "y": 60})
    b = fake_manifest({"x": 100, "y": 60}, seed=3)  # same files, shuffled
    split_a = dict(zip(a.path, assign_splits(a, CFG), strict=True))
    split_b = dict(zip(b.path, assign_splits(b, CFG), strict=True))
    assert split_a == split_b


def test_seed_changes_the_split():
    m = fake_manifest({"x": 100})
    assert not assign_splits(m, CFG).equals(assign_splits(m, PrepareSettings(seed=CFG.seed + 1)))


def test_identical_images_never_cross_splits():
    m = fake_manifest({"x": 90, "y": 90}, dup_every=3)  # every content appears three times
    m["split"] = assign_splits(m, CFG)
    assert (m.groupby("sha256")["split"].nunique() == 1).all()
    assert set(m.split) == {"train", "val", "test"}


@pytest.mark.parametrize("n", [10, 57, 200])
def test_each_class_gets_its_fractions(n):
    m = fake_manifest({"a": n, "b": n * 2, "c": n + 7})
    m["split"] = assign_splits(m, CFG)
    for _, g in m.groupby("label"):
        share = g.split.value_counts()
        for split, frac in (("val", CFG.val), ("test", CFG.test)):
            assert abs(share.get(split, 0) - len(g) * frac) <= 1, (split, share)


def test_growing_the_dataset_keeps_most_existing_assignments():
    before = fake_manifest({"a": 200, "b": 200})
    after = fake_manifest({"a": 240, "b": 240})  # 20% more images
    old = dict(zip(before.path, assign_splits(before, CFG), strict=True))
    new = dict(zip(after.path, assign_splits(after, CFG), strict=True))
    moved = sum(old[p] != new[p] for p in old)
    assert moved / len(old) < 0.1, moved


@pytest.mark.parametrize(
    "n, expect",
    [(1, (0, 0)), (2, (0, 0)), (3, (1, 1)), (4, (1, 1)), (20, (3, 3)), (100, (15, 15))],
)
def test_cut_keeps_training_data_and_fills_val_and_test_when_possible(n, expect):
    n_val, n_test = _cut(n, CFG)
    assert (n_val, n_test) == expect
    assert n - n_val - n_test >= 1


def test_zero_fraction_split_stays_empty():
    m = fake_manifest({"a": 50})
    splits = assign_splits(m, PrepareSettings(train=0.8, val=0.2, test=0.0))
    assert "test" not in set(splits)
    assert np.isclose((splits == "val").mean(), 0.2, atol=0.02)
