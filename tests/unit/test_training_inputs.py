"""The pieces of training that need no Ray: the DataLoader input, search spaces, settings updates."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lensops.core.settings import SettingsError, load_settings


@pytest.fixture
def prepared(project, good_raw):
    from data.prepare import prepare_dataset

    settings = load_settings(project / "params.yaml", ["train.preprocessing.size=16"])
    prepare_dataset(settings, progress=False)
    return settings


def test_dataloader_shards_are_disjoint_and_match_the_eval_transform(prepared):
    from training.datasets import frame_rows, load_images, torch_loader
    from training.train import load_training_data

    data = load_training_data(prepared)
    spec = prepared.train.preprocessing
    seen = []
    for rank in (0, 1):
        loader = torch_loader(
            frame_rows(data.val),
            str(data.raw),
            spec.model_dump(),
            augment=None,
            seed=0,
            batch_size=4,
            rank=rank,
            world=2,
            workers=0,
        )
        batches = list(loader)
        seen.append(np.concatenate([b["image"].numpy() for b in batches]))
        assert batches[0]["image"].shape[1:] == (3, 16, 16) and batches[0]["label"].dtype.is_floating_point is False
    expected = load_images(data.val, data.raw, spec)
    # DistributedSampler without shuffling deals rows round-robin: rank 0 gets 0, 2, 4, ...
    np.testing.assert_array_equal(seen[0], expected[0::2])
    np.testing.assert_array_equal(seen[1][: len(expected[1::2])], expected[1::2])


def test_augmented_loader_reshuffles_every_epoch(prepared):
    from training.datasets import frame_rows, torch_loader
    from training.train import load_training_data

    data = load_training_data(prepared)
    loader = torch_loader(
        frame_rows(data.train),
        str(data.raw),
        prepared.train.preprocessing.model_dump(),
        augment=prepared.train.augment,
        seed=0,
        batch_size=64,
        rank=0,
        world=1,
        workers=0,
    )
    orders = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        orders.append(list(loader.sampler))
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_settings_updated_validates_and_keeps_the_root(project):
    settings = load_settings(project / "params.yaml")
    changed = settings.updated({"train.lr": 0.01, "train.preprocessing.size": 64})
    assert changed.train.lr == 0.01 and changed.train.preprocessing.size == 64 and changed.root == settings.root
    assert settings.train.lr != 0.01  # the original is untouched
    with pytest.raises(SettingsError, match=re.escape("did you mean 'train.lr'")):
        settings.updated({"train.lrr": 0.01})
    with pytest.raises(SettingsError, match=re.escape("train.epochs")):
        settings.updated({"train.epochs": 0})


def test_search_space_maps_every_sampler(project):
    from ray import tune

    from training.tune import search_space

    space = {
        "train.lr": {"loguniform": [0.0001, 0.01]},
        "train.dropout": {"uniform": [0.0, 0.3]},
        "train.batch_size": {"choice": [32, 64]},
        "train.epochs": {"randint": [2, 5]},
    }
    settings = load_settings(project / "params.yaml").updated({"tune.space": space})
    result = search_space(settings)
    assert isinstance(result["train.lr"], tune.search.sample.Float) and result["train.lr"].lower == 0.0001
    assert isinstance(result["train.batch_size"], tune.search.sample.Categorical) and result[
        "train.batch_size"
    ].categories == [32, 64]
    assert isinstance(result["train.epochs"], tune.search.sample.Integer)
    with pytest.raises(SettingsError, match=re.escape("tune.space.train.batch_size = 0")):
        search_space(settings.updated({"tune.space": {"train.batch_size": {"choice": [0, 32]}}}))
