"""Image quality: measured per image in the decoding pass, judged by opt-in expectations."""

import io

import numpy as np
from PIL import Image, ImageFilter

from data.manifest import build_manifest
from data.quality import image_quality
from data.validation import validate_manifest
from lensops.core.settings import ValidateSettings
from tests.imagefactory import noise_image


def test_measures_read_as_expected():
    dark = image_quality(Image.new("L", (64, 32), 5))
    assert dark["brightness"] == 5 and dark["contrast"] == 0 and dark["blur"] == 0
    assert dark["aspect_ratio"] == 2.0 and len(dark["phash"]) == 16
    sharp = noise_image(1, (64, 64))
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))
    assert image_quality(sharp)["blur"] > 50 * image_quality(blurred)["blur"]
    sixteen = image_quality(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)))
    assert sixteen["brightness"] == 255  # 16-bit scaled to 8 bits, not clipped


def test_aspect_ratio_is_as_displayed():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    buf = io.BytesIO()
    noise_image(2, (40, 20)).save(buf, format="JPEG", exif=exif)
    assert image_quality(Image.open(buf))["aspect_ratio"] == 0.5


def test_quality_expectations_are_off_by_default_and_fail_with_examples_when_on(good_raw):
    for i in range(4):
        Image.new("RGB", (32, 32), (3, 3, 3)).save(good_raw / "ant" / f"night_{i}.png")
    manifest = build_manifest(good_raw)
    assert {"brightness", "contrast", "blur", "aspect_ratio", "phash"} <= set(manifest.columns)
    assert validate_manifest(manifest, ValidateSettings()).ok

    strict = ValidateSettings.model_validate(
        {"quality": {"max_dark_fraction": 0.05, "max_blurry_fraction": 0.5, "modes": ["RGB"]}}
    )
    report = validate_manifest(manifest, strict)
    verdicts = {e.name: e for e in report.expectations}
    assert not verdicts["few_dark_images"].success
    assert verdicts["few_dark_images"].detail.startswith("4 of 40 images dark (mean grey under 20); at most 5.0%")
    assert "ant/night_0.png" in verdicts["few_dark_images"].detail
    assert verdicts["few_blurry_images"].success and verdicts["colour_modes_expected"].success
    assert report.bad_files == []  # a dark picture is not a broken file
