"""Untrusted image bytes -> a decoded PIL image, or a rejection a client can act on.

Serving runs `prepare_upload` on every request body, in a `data.decoder_pool.DecoderPool`
worker (a deadline and a memory cap, killable without stopping the replica). It is `data.images.decode_image` with the
serving limits: the rules of what an acceptable image is live there, shared with validation.
The format is read from the bytes, never from a Content-Type or a file name. Each rejection
carries the HTTP status and a short code, and a detail that says what was wrong and what is
allowed:

| status | code | when |
| --- | --- | --- |
| 413 | `too_large` | the body is over the size limit |
| 415 | `unsupported_format` | not an image, or a format outside the allow-list |
| 422 | `undecodable` | empty, truncated, corrupt, or over the pixel or frame limit |
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lensops.core.settings import PreprocessingSpec

from .images import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageLimits,
    ImageRejected,
    decode_image,
    light_enough,
    to_rgb,
)
from .pixels import image_stats, resize

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "Upload",
    "UploadRejected",
    "prepare_upload",
    "prepare_uploads",
    "read_upload",
]

UploadRejected = ImageRejected
Upload = DecodedImage


def read_upload(
    body: bytes,
    *,
    allowed_formats: Iterable[str] = DEFAULT_FORMATS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    target_size: tuple[int, int] | None = None,
) -> Upload:
    limits = ImageLimits.of(allowed_formats, max_bytes=max_bytes, max_pixels=max_pixels, max_frames=max_frames)
    return decode_image(body, limits, target_size=target_size)


class TooHeavy(Exception):
    """The upload's header promises more work than the light lane takes: decode it in the heavy lane."""


def prepare_upload(
    body: bytes, limits: ImageLimits, spec: PreprocessingSpec, light: ImageLimits | None = None
) -> dict[str, Any]:
    """Untrusted bytes -> the spec's resized upright RGB pixels (uint8, HWC) and the image stats.

    The whole of an upload's image work, torch-free, so it runs in a decoding worker and only
    `size x size x 3` bytes travel back; the caller normalises (`data.pixels.normalize`).
    Raises `ImageRejected` for bytes that are not an acceptable image, whatever they are.
    """
    if light is not None and not light_enough(body, limits, light):
        raise TooHeavy()
    decoded = decode_image(body, limits)
    try:
        rgb = to_rgb(decoded.image)
        pixels = np.asarray(resize(rgb, spec), dtype=np.uint8)
    except MemoryError:
        raise ImageRejected(422, "undecodable", "the image needs more memory than a decoder may use") from None
    except Exception as e:  # a mode or a size no conversion handles is still the upload's fault
        raise ImageRejected(422, "undecodable", f"the image cannot be converted: {type(e).__name__}: {e}") from None
    return {"pixels": pixels, **image_stats(rgb)}


def prepare_uploads(
    bodies: list[bytes], limits: ImageLimits, spec: PreprocessingSpec, light: ImageLimits | None = None
) -> list[dict[str, Any] | ImageRejected | TooHeavy]:
    """`prepare_upload` for several uploads in one task: one round trip to a decoding worker for a
    batch's images instead of one each. Each upload's outcome in its place, its rejection (or
    `TooHeavy`) as a value, so one bad upload never fails the others."""
    outcomes: list[dict[str, Any] | ImageRejected | TooHeavy] = []
    for body in bodies:
        try:
            outcomes.append(prepare_upload(body, limits, spec, light))
        except (ImageRejected, TooHeavy) as e:
            outcomes.append(e)
    return outcomes
