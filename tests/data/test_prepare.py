import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from data.prepare import DatasetInvalidError, load_prepared, prepare_dataset
from lensops.core.settings import load_settings


def test_prepare_writes_manifest_classes_and_metrics(good_raw, project):
    shutil.copy(good_raw / "ant" / "img_0000.png", good_raw / "ant" / "dup_a.png")
    shutil.copy(good_raw / "ant" / "img_0000.png", good_raw / "ant" / "dup_b.png")
    prepared = prepare_dataset(load_settings())
    manifest, classes, raw = load_prepared(project / "data" / "prepared")
    assert classes == ["ant", "bee", "cat"] and raw == good_raw.resolve()
    assert len(manifest) == 38 and set(manifest.split) == {"train", "val", "test"}
    assert manifest.groupby("sha256").split.nunique().max() == 1  # duplicates stay together
    assert (manifest.label_index == manifest.label.map(classes.index)).all()
    assert all((raw / p).is_file() for p in manifest.path)
    metrics = json.loads((project / "metrics" / "data.json").read_text())
    assert metrics == {
        "n_images": 38,
        "n_classes": 3,
        **{f"n_{s}": int((manifest.split == s).sum()) for s in ("train", "val", "test")},
    }
    with Image.open(project / "reports" / "data_splits.png") as chart:
        chart.load()
    assert prepared.counts["train"]["ant"] == int(((manifest.label == "ant") & (manifest.split == "train")).sum())


def test_prepare_is_deterministic(good_raw, project):
    prepare_dataset(load_settings())
    first = pd.read_parquet(project / "data" / "prepared" / "manifest.parquet")
    shutil.rmtree(project / "data" / "prepared")
    prepare_dataset(load_settings())
    assert first.equals(pd.read_parquet(project / "data" / "prepared" / "manifest.parquet"))


def test_prepare_refuses_an_invalid_dataset_and_writes_nothing(good_raw, project):
    (good_raw / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetInvalidError, match=r"fails validation.*lensops data validate"):
        prepare_dataset(load_settings())
    assert not (project / "data" / "prepared").exists()
