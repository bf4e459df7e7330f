"""Untrusted image bytes -> a decoded PIL image, or a rejection a client can act on.

Serving calls `read_upload` on every request body. The format is read from the bytes, never
from a Content-Type or a file name; the pixel count (all frames) is read from the header and
checked before anything is decoded; Pillow's decompression-bomb warning is an error. Each
rejection carries the HTTP status and a short code, and a detail that says what was wrong and
what is allowed:

| status | code | when |
| --- | --- | --- |
| 413 | `too_large` | the body is over the size limit |
| 415 | `unsupported_format` | not an image Pillow recognises, or a format outside the allow-list |
| 422 | `undecodable` | empty, truncated, corrupt, or over the pixel limit |
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000


class UploadRejected(ValueError):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass
class Upload:
    image: Image.Image  # the first frame, fully loaded
    format: str
    width: int
    height: int
    frames: int


def read_upload(
    body: bytes,
    *,
    allowed_formats: Iterable[str] = DEFAULT_FORMATS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Upload:
    allowed = tuple(f.upper() for f in allowed_formats)
    if len(body) > max_bytes:
        raise UploadRejected(413, "too_large", f"the image is {len(body):,} bytes; the limit is {max_bytes:,}")
    if not body:
        raise UploadRejected(422, "undecodable", "the body is empty; send the image bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(body))
        except UnidentifiedImageError:
            raise UploadRejected(
                415, "unsupported_format", f"not a recognised image; allowed formats: {', '.join(allowed)}"
            ) from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise UploadRejected(422, "undecodable", f"the image is too large to decode safely ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise UploadRejected(422, "undecodable", f"the image header is corrupt ({e})") from None
        fmt = (image.format or "").upper()
        if fmt not in allowed:
            raise UploadRejected(
                415,
                "unsupported_format",
                f"{fmt or 'unknown'} images are not accepted; allowed formats: {', '.join(allowed)}",
            )
        width, height = image.size
        frames = int(getattr(image, "n_frames", 1) or 1)
        if width * height * frames > max_pixels:
            raise UploadRejected(
                422,
                "undecodable",
                f"{width}x{height} pixels x {frames} frame(s) is over the limit of {max_pixels:,} pixels",
            )
        try:
            image.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise UploadRejected(422, "undecodable", f"the image is too large to decode safely ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise UploadRejected(422, "undecodable", f"the {fmt} data does not decode: {e}") from None
    return Upload(image, fmt, width, height, frames)
