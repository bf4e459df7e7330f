"""Near copies on real files: found by validation, refused across labels, kept in one split."""

import io

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance

from data.manifest import build_manifest
from data.prepare import prepare_dataset
from data.quality import image_quality
from data.validation import validate_manifest
from lensops.core.settings import ValidateSettings, load_settings

CFG = ValidateSettings()


def photo(seed: int, size: int = 192) -> Image.Image:
    """A picture with structure (shapes on a background), as pHash is meant for."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x, y = (int(v) for v in rng.integers(-40, size, 2))
        w, h = (int(v) for v in rng.integers(20, 120, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def jpeg(image: Image.Image, quality: int = 70) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def copies(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    return {
        "resized": image.resize((w // 2, h // 2)),
        "reencoded": Image.open(io.BytesIO(jpeg(image, 60))),
        "cropped": image.crop((3, 3, w - 3, h - 3)),
        "brightened": ImageEnhance.Brightness(image).enhance(1.15),
    }


def test_resized_reencoded_cropped_and_brightened_copies_are_near_the_original():
    original = image_quality(photo(1))["phash"]
    for name, copy in copies(photo(1)).items():
        distance = bin(int(original, 16) ^ int(image_quality(copy)["phash"], 16)).count("1")
        assert distance <= CFG.near_duplicates.max_distance, name
    unrelated = [image_quality(photo(s))["phash"] for s in range(2, 12)]
    assert all(bin(int(original, 16) ^ int(u, 16)).count("1") > 10 for u in unrelated)


def test_near_copies_under_two_labels_fail_and_under_one_label_are_reported(good_raw):
    photo(1).save(good_raw / "ant" / "photo.png")
    copies(photo(1))["resized"].save(good_raw / "ant" / "photo_small.png")
    copies(photo(1))["brightened"].save(good_raw / "bee" / "photo_bright.png")
    report = validate_manifest(build_manifest(good_raw, cfg=CFG), CFG)
    assert report.near_duplicates == [["ant/photo.png", "ant/photo_small.png", "bee/photo_bright.png"]]
    failed = [e.name for e in report.expectations if not e.success]
    assert failed == ["near_images_share_one_label"]
    reasons = {b["path"]: b["reason"] for b in report.bad_files}
    assert reasons["bee/photo_bright.png"] == "a near copy of ant/photo.png, ant/photo_small.png (a different label)"
    assert "ant/photo.png" in reasons  # both sides are named: either may carry the wrong label


def test_prepare_keeps_each_near_group_in_one_split(good_raw, project):
    for i in range(6):
        photo(100 + i).save(good_raw / "cat" / f"photo_{i}.png")
        for name, copy in copies(photo(100 + i)).items():
            copy.convert("RGB").save(good_raw / "cat" / f"photo_{i}_{name}.png")
    prepare_dataset(load_settings(), progress=False)
    prepared = pd.read_parquet(project / "data" / "prepared" / "manifest.parquet")
    photos = prepared[prepared["path"].str.contains("photo_")]
    group = photos["path"].str.extract(r"photo_(\d)")[0]
    assert photos.groupby(group)["split"].nunique().max() == 1
    assert photos["split"].nunique() > 1  # the groups themselves are spread over the splits
