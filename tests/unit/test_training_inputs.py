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
        orders.append([i for i, _ in loader.sampler])
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def _loader(prepared, data, **kw):
    from training.datasets import frame_rows, torch_loader

    args = {"augment": prepared.train.augment, "seed": 3, "batch_size": 16, "rank": 0, "world": 1, "workers": 0}
    spec = prepared.train.preprocessing.model_dump()
    return torch_loader(frame_rows(data.train), str(data.raw), spec, **{**args, **kw})


def _epoch(loader, epoch: int) -> np.ndarray:
    loader.sampler.set_epoch(epoch)
    return np.concatenate([b["image"].numpy() for b in loader])


def test_deterministic_augmentation_depends_on_seed_epoch_and_image_only(prepared):
    """Per-image seeds: the same batches in any number of loader processes; new draws each epoch and seed."""
    from training.train import load_training_data

    data = load_training_data(prepared)
    in_process = _loader(prepared, data, deterministic=True)
    in_two_processes = _loader(prepared, data, deterministic=True, workers=2)
    first = _epoch(in_process, 0)
    np.testing.assert_array_equal(first, _epoch(in_two_processes, 0))
    np.testing.assert_array_equal(_epoch(in_process, 1), _epoch(in_two_processes, 1))
    np.testing.assert_array_equal(first, _epoch(_loader(prepared, data, deterministic=True), 0))  # a fresh loader
    assert not np.array_equal(first, _epoch(_loader(prepared, data, deterministic=True, seed=4), 0))
    # Epoch 1 shows the same images in another order and with other draws: compare image by image.
    in_process.sampler.set_epoch(1)
    order = [i for i, _ in in_process.sampler]
    again = _epoch(in_process, 1)
    in_process.sampler.set_epoch(0)
    position = {i: k for k, (i, _) in enumerate(in_process.sampler)}
    assert not np.array_equal(again, first[[position[i] for i in order]])


def test_without_determinism_each_rank_and_loader_process_has_its_own_stream(prepared):
    from training.datasets import ManifestImages, frame_rows
    from training.train import load_training_data

    data = load_training_data(prepared)
    args = (frame_rows(data.train), str(data.raw), prepared.train.preprocessing.model_dump(), prepared.train.augment, 3)
    # Five draws of one image per rank: the streams differ (every rank drew the same before).
    rank0, rank1 = ManifestImages(*args, rank=0), ManifestImages(*args, rank=1)
    draws = [np.stack([dataset[0]["image"] for _ in range(5)]) for dataset in (rank0, rank1)]
    assert not np.array_equal(draws[0], draws[1])
    again = ManifestImages(*args, rank=0)
    np.testing.assert_array_equal(draws[0], np.stack([again[0]["image"] for _ in range(5)]))  # but are seeded


def test_a_changed_missing_or_undecodable_image_stops_training_named(prepared):
    """Checked before any worker starts: the run fails once, naming each file, instead of retrying."""
    from data.prepare import load_prepared
    from training.datasets import CorruptImage, DecodeBatch
    from training.trainer import TrainingError, load_training_data

    manifest, _, raw = load_prepared(prepared.path(prepared.data.prepared))
    changed, missing, garbage = (raw / p for p in manifest["path"].iloc[[0, 1, 2]])
    changed.write_bytes(changed.read_bytes() + b"\0")
    missing.unlink()
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")
    with pytest.raises(TrainingError) as failure:
        load_training_data(prepared)
    message = str(failure.value)
    assert "3 prepared image(s)" in message and all(str(f) in message for f in (changed, missing, garbage))
    # A file that stops decoding mid-run is named by the decoder too.
    decoder = DecodeBatch(str(raw), prepared.train.preprocessing.model_dump(), prepared.train.augment, seed=0)
    with pytest.raises(CorruptImage, match=re.escape(str(garbage))):
        decoder.image(manifest["path"].iloc[2])


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
