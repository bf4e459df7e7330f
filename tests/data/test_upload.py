"""Untrusted uploads: every bad input gets the right rejection; every awkward valid image decodes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data.images import ImageLimits
from data.transforms import eval_transform
from data.upload import UploadRejected, read_upload
from lensops.core.settings import PreprocessingSpec
from tests.imagefactory import encode, noise_image, png_bomb, truncated

JPEG = encode(noise_image(1, (64, 48)), "JPEG")
PNG = encode(noise_image(2, (64, 48)), "PNG")


def _gif_animation() -> bytes:
    frames = [noise_image(i, (24, 24)).convert("P") for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return out.getvalue()


def _exif_rotated() -> bytes:
    image = noise_image(3, (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def _palette_with_transparency() -> bytes:
    image = noise_image(4, (16, 16)).convert("P")
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=0)
    return out.getvalue()


BAD = {
    "zero bytes": (b"", 422),
    "text named .jpg": (b"hello, this is not a picture\n" * 10, 415),
    "truncated JPEG": (truncated(JPEG, 0.4), 422),
    "truncated PNG": (truncated(PNG, 0.5), 422),
    "PNG bomb": (png_bomb(), 422),
    "SVG": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        415,
    ),
    "random bytes": (np.random.default_rng(0).bytes(4096), 415),
    "30 MB body": (b"\xff" * (30 * 2**20), 413),
    "ICO (not allowed)": (encode(noise_image(5, (16, 16)), "ICO"), 415),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_are_rejected_with_the_right_status(name):
    body, status = BAD[name]
    with pytest.raises(UploadRejected) as rejected:
        read_upload(body)
    assert rejected.value.status == status, rejected.value.detail
    assert rejected.value.detail  # always says what was wrong


def test_format_comes_from_the_bytes_and_the_allow_list_is_configurable():
    assert read_upload(PNG).format == "PNG"
    with pytest.raises(UploadRejected, match="allowed formats: JPEG") as rejected:
        read_upload(PNG, allowed_formats=["JPEG"])
    assert rejected.value.status == 415


def test_pixel_limit_counts_every_frame():
    gif = _gif_animation()  # 3 frames of 24x24 = 1728 pixels
    assert read_upload(gif, max_pixels=1728).frames == 3
    with pytest.raises(UploadRejected, match="3 frame"):
        read_upload(gif, max_pixels=1727)


AWKWARD = {
    "CMYK JPEG": lambda: encode(noise_image(6, (20, 20)).convert("CMYK"), "JPEG"),
    "16-bit greyscale PNG": lambda: encode(
        Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150), "PNG"
    ),
    "8-bit greyscale PNG": lambda: encode(noise_image(7, (20, 20)).convert("L"), "PNG"),
    "RGBA PNG": lambda: encode(noise_image(8, (20, 20)).convert("RGBA"), "PNG"),
    "palette with transparency": _palette_with_transparency,
    "animated GIF": _gif_animation,
    "EXIF-rotated JPEG": _exif_rotated,
    "1x1 PNG": lambda: encode(noise_image(9, (1, 1)), "PNG"),
    "WebP": lambda: encode(noise_image(10, (20, 20)), "WEBP"),
    "BMP": lambda: encode(noise_image(11, (20, 20)), "BMP"),
    "TIFF": lambda: encode(noise_image(12, (20, 20)), "TIFF"),
}


@pytest.mark.parametrize("name", list(AWKWARD))
def test_awkward_valid_images_decode_through_the_shared_transform(name):
    upload = read_upload(AWKWARD[name]())
    tensor = eval_transform(PreprocessingSpec(size=16))(upload.image)
    assert tuple(tensor.shape) == (3, 16, 16) and bool(tensor.isfinite().all())


def test_exif_orientation_is_applied():
    from data.transforms import to_rgb

    upload = read_upload(_exif_rotated())
    assert (upload.width, upload.height) == (40, 20)  # as stored
    assert to_rgb(upload.image).size == (20, 40)  # as displayed


@pytest.mark.parametrize("name", list(AWKWARD))
def test_prepared_uploads_equal_the_offline_transform(name):
    from data.pixels import normalize
    from data.upload import prepare_upload

    spec = PreprocessingSpec(size=16)
    body = AWKWARD[name]()
    prepared = prepare_upload(body, ImageLimits(), spec)
    expected = eval_transform(spec)(read_upload(body).image).numpy()
    assert prepared["pixels"].dtype == np.uint8 and prepared["pixels"].shape == (16, 16, 3)
    np.testing.assert_array_equal(normalize(prepared["pixels"], spec), expected)
    assert {"width", "height", "brightness", "contrast"} <= set(prepared)


def test_serving_workers_decode_torch_free_and_a_runaway_decode_costs_one_worker():
    from data.decoder_pool import DecoderPool
    from data.upload import prepare_upload
    from serving.preprocess import WORKER_PRELOAD
    from tests.hostile import heavy_modules, many_scan_jpeg

    spec, lenient = PreprocessingSpec(size=16), ImageLimits(max_scans=10**6)
    with DecoderPool(workers=1, timeout_s=0.2, memory_mb=256, preload=WORKER_PRELOAD) as pool:
        assert pool.submit(prepare_upload, PNG, lenient, spec).result()["pixels"].shape == (16, 16, 3)
        assert pool.submit(heavy_modules).result() == []  # a worker starts small: no torch, no Ray
        with pytest.raises(UploadRejected, match=r"took longer than 0\.2 s") as rejected:
            pool.submit(prepare_upload, many_scan_jpeg(copies=100_000), lenient, spec).result()
        assert rejected.value.status == 422
        assert pool.submit(prepare_upload, JPEG, lenient, spec).result()["width"] == 64  # the replacement works


def test_the_light_lane_passes_small_images_on_and_names_the_heavy_ones_from_their_headers():
    from data.images import light_enough
    from data.upload import TooHeavy, prepare_upload
    from serving.preprocess import LIGHT_FRAMES, LIGHT_PIXELS, LIGHT_SCANS
    from tests.hostile import flat_png, many_page_tiff, many_scan_jpeg

    limits, spec = ImageLimits(), PreprocessingSpec(size=16)
    light = ImageLimits.of(max_pixels=LIGHT_PIXELS, max_frames=LIGHT_FRAMES, max_scans=LIGHT_SCANS)
    progressive = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(progressive, format="JPEG", progressive=True)
    assert light_enough(PNG, limits, light) and light_enough(JPEG, limits, light)
    assert light_enough(progressive.getvalue(), limits, light)  # an ordinary progressive JPEG: about 10 scans
    assert not light_enough(flat_png(2100, 2000), limits, light)  # 4.2 MP
    assert not light_enough(many_page_tiff(8000), limits, light)  # frames counted only up to the lane's limit
    assert not light_enough(many_scan_jpeg(size=64, copies=50), limits, light)  # within max_scans, over the lane's
    with pytest.raises(UploadRejected, match="JPEG scans") as rejected:  # over the real limit: refused here
        light_enough(many_scan_jpeg(size=64, copies=1_000), limits, light)
    assert rejected.value.status == 422
    with pytest.raises(TooHeavy):
        prepare_upload(flat_png(2100, 2000), limits, spec, light)
    assert prepare_upload(PNG, limits, spec, light)["pixels"].shape == (16, 16, 3)


def test_uploads_prepared_together_keep_each_outcome_in_its_place():
    from data.upload import TooHeavy, prepare_upload, prepare_uploads
    from serving.preprocess import LIGHT_FRAMES, LIGHT_PIXELS, LIGHT_SCANS
    from tests.hostile import flat_png

    limits, spec = ImageLimits(), PreprocessingSpec(size=16)
    light = ImageLimits.of(max_pixels=LIGHT_PIXELS, max_frames=LIGHT_FRAMES, max_scans=LIGHT_SCANS)
    outcomes = prepare_uploads([PNG, b"not an image", flat_png(2100, 2000), JPEG], limits, spec, light)
    assert [type(o).__name__ for o in outcomes] == ["dict", "ImageRejected", "TooHeavy", "dict"]
    assert outcomes[1].status == 415 and isinstance(outcomes[2], TooHeavy)
    np.testing.assert_array_equal(outcomes[3]["pixels"], prepare_upload(JPEG, limits, spec)["pixels"])


def test_a_decoding_pool_can_run_its_workers_at_a_lower_priority():
    import os

    from data.decoder_pool import DecoderPool

    with DecoderPool(workers=1, timeout_s=5, memory_mb=256, preload=[], nice=19) as pool:
        assert pool.submit(os.nice, 0).result() == min(19, os.nice(0) + 19)
        if hasattr(os, "SCHED_IDLE"):  # at 19, Linux's idle class: it runs only on a core nothing else wants
            assert pool.submit(os.sched_getscheduler, 0).result() == os.SCHED_IDLE


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (300, 200, 3)])
def test_image_stats_equal_the_pixels_mean_and_spread(shape):
    """The stats come from Pillow's grey histogram (a 36 MP upload costs 0.05 s, not seconds): the
    same numbers as over the pixels, which the baselines of earlier versions were computed with."""
    from data.pixels import image_stats

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    image = Image.fromarray(pixels)
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    stats = image_stats(image)
    assert (stats["width"], stats["height"]) == (shape[1], shape[0])
    assert stats["brightness"] == pytest.approx(grey.mean(), abs=1e-9)
    assert stats["contrast"] == pytest.approx(grey.std(), abs=1e-9)
