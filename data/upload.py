"""Untrusted image bytes -> a decoded PIL image, or a rejection a client can act on.

Serving calls `read_upload` on every request body. It is `data.images.decode_image` with the
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

from .images import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageLimits,
    ImageRejected,
    decode_image,
)

__all__ = ["DEFAULT_FORMATS", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "Upload", "UploadRejected", "read_upload"]

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
