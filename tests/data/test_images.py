"""The shared decoder: what an acceptable image is, decided the same way for every stage."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import pytest
from PIL import Image

from data.decoder_pool import DecoderPool
from data.images import ImageLimits, ImageRejected, decode_image, name_format, to_rgb, upright
from tests.hostile import garbage_exif_jpeg, many_page_tiff, many_scan_jpeg, mpo
from tests.imagefactory import encode, noise_image, png_bomb


def test_mpo_phone_photos_count_as_jpeg_everywhere():
    decoded = decode_image(mpo(1), ImageLimits.of(["JPEG"]))
    assert (decoded.format, decoded.frames) == ("JPEG", 2)


def test_frames_are_counted_without_walking_every_page():
    with pytest.raises(ImageRejected, match="more than 1,000 frames") as rejected:
        decode_image(many_page_tiff(8000), ImageLimits(max_bytes=10**7))
    # The count stopped one past the limit: the other 6,999 pages were never walked (n_frames would walk them all).
    assert rejected.value.status == 422 and rejected.value.header.frames == 1001


def test_jpeg_scans_are_counted_before_decoding_and_ordinary_progressive_photos_pass():
    photo = encode(noise_image(3, (256, 192)), "JPEG", progressive=True)
    assert decode_image(photo).format == "JPEG"
    assert decode_image(mpo(2)).format == "JPEG"  # two images, each with its scans
    hostile = many_scan_jpeg(size=64, copies=200)
    with pytest.raises(ImageRejected, match=r"JPEG scans .* the limit is 100") as rejected:
        decode_image(hostile)
    assert rejected.value.status == 422 and rejected.value.header.format == "JPEG"
    assert decode_image(hostile, ImageLimits.of(max_scans=1000)).width == 64  # the limit is the only reason


def test_pixels_are_judged_over_all_frames_from_the_headers():
    tiff = encode(noise_image(1, (10, 10)), "TIFF")
    frames = [noise_image(i, (10, 10)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    assert decode_image(tiff, ImageLimits(max_pixels=100)).frames == 1
    with pytest.raises(ImageRejected, match=r"10x10 pixels x 2 frame\(s\) is over the limit of 100"):
        decode_image(buf.getvalue(), ImageLimits(max_pixels=100))


def test_a_bomb_is_rejected_with_its_size_before_any_pixel_is_inflated():
    with pytest.raises(ImageRejected) as rejected:
        decode_image(png_bomb(), ImageLimits(max_pixels=10**9))  # Pillow's own guard is an error too
    assert rejected.value.status == 422


def test_disallowed_formats_are_named_from_their_magic_bytes_and_never_parsed():
    ppm = encode(noise_image(2), "PPM")
    assert name_format(ppm[:64]) == "PPM" and name_format(b"hello") is None
    with pytest.raises(ImageRejected, match="PPM images are not accepted") as rejected:
        decode_image(ppm)
    assert rejected.value.status == 415
    with pytest.raises(ImageRejected, match="the PNG header is corrupt") as rejected:
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert rejected.value.status == 422


def test_bad_exif_loses_its_orientation_never_the_image():
    decoded = decode_image(garbage_exif_jpeg(3))
    assert upright(decoded.image).size == (40, 30) and to_rgb(decoded.image).mode == "RGB"


def test_one_band_and_sixteen_bit_pngs_are_accepted():
    for mode in ("L", "1", "I;16"):
        image = noise_image(4, (20, 10), mode="L").convert(mode) if mode != "I;16" else Image.new("I;16", (20, 10))
        assert to_rgb(decode_image(encode(image, "PNG")).image).size == (20, 10)


def test_jpeg_draft_decodes_a_large_photo_at_a_reduced_scale():
    big = encode(noise_image(5, (1600, 1200)), "JPEG")
    full, drafted = decode_image(big), decode_image(big, target_size=(224, 224))
    assert full.image.size == (1600, 1200)
    assert drafted.image.size == (400, 300) and (drafted.width, drafted.height) == (1600, 1200)


def _hang(_: bytes) -> None:
    time.sleep(60)


def _crash(_: bytes) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 2**20))


def test_the_pool_stops_a_runaway_decoder_and_carries_on():
    with DecoderPool(workers=1, timeout_s=1, memory_mb=64) as pool:
        with pytest.raises(ImageRejected, match="took longer than 1 s") as rejected:  # a hang would never return
            pool.submit(_hang, b"").result()
        assert rejected.value.status == 422
        with pytest.raises(ImageRejected, match="crashed or was killed"):
            pool.submit(_crash, b"").result()
        with pytest.raises(ImageRejected, match="more memory than a decoder may use"):
            pool.submit(_allocate, 256).result()
        assert pool.submit(_allocate, 16).result() == 16 * 2**20  # the replaced worker works
        assert pool.decode(encode(noise_image(6), "PNG")).result().format == "PNG"
        with pytest.raises(ImageRejected) as rejected:
            pool.decode(b"not an image").result()
        assert rejected.value.status == 415  # the decoder's own rejection crosses the process boundary


def test_the_pool_is_async_friendly():
    async def decode_two(pool):
        futures = [asyncio.wrap_future(pool.decode(encode(noise_image(i), "JPEG"))) for i in (7, 8)]
        return [d.format for d in await asyncio.gather(*futures)]

    with DecoderPool(workers=1) as pool:
        assert asyncio.run(decode_two(pool)) == ["JPEG", "JPEG"]
