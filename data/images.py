"""What counts as an acceptable image: one decision for validation, training and serving.

`decode_image(data, limits)` turns untrusted bytes into a loaded PIL image or raises
`ImageRejected(status, code, detail)`, whatever the bytes are:

| status | code | when |
| --- | --- | --- |
| 413 | `too_large` | more bytes than `limits.max_bytes` |
| 415 | `unsupported_format` | not an image, or a format outside `limits.formats` |
| 422 | `undecodable` | empty, truncated, corrupt, too many frames or pixels, or any error of a decoder |

The rules, in the order they are applied:

- Only the allowed formats' parsers ever see the bytes (`Image.open(..., formats=...)`); the
  name of a refused format is read from its magic bytes, never by parsing it. A JPEG carrying
  an MPF second image (most phone photos) is reported by Pillow as MPO and counts as JPEG.
- Frames are counted before any is decoded: from the header where the format stores the count
  (APNG, animated WebP, MPO), otherwise by seeking one frame at a time up to
  `limits.max_frames` + 1 (`n_frames` would walk all 8,000 pages of a hostile TIFF).
- A JPEG may hold at most `limits.max_scans` scans (SOS markers, counted in the bytes before
  decoding; an embedded thumbnail's count too). Each scan of a progressive JPEG is a pass over
  every block, so a small file of thousands of scans keeps a decoder busy for seconds: the
  count is a decision no machine's speed changes, where the deadline is only the last guard.
- Width x height, summed over the frames, is checked against `limits.max_pixels` from the
  headers alone, so a decompression bomb is rejected without a byte being inflated; Pillow's
  own `DecompressionBombWarning` is an error too.
- Any exception a decoder raises (`SyntaxError`, `struct.error`, `MemoryError`, ...) becomes a
  422 with the reason. A bad EXIF block is never a reason: `upright` ignores an orientation it
  cannot apply.

These functions run in the calling process, for trusted files (training reads files that
validation accepted). Untrusted bytes go through `data.decoder_pool.DecoderPool`, which runs
the same functions in worker processes under a deadline and a memory cap.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

# The plugins of the formats lensops allows or names, registered by importing them: without
# them, `Image.open(formats=...)` and `Image.registered_extensions()` would import all forty
# of Pillow's plugins (`Image.init()`), a cost every new decoding worker would pay.
from PIL import (  # noqa: F401  (imported to register the plugins)
    BmpImagePlugin,
    GifImagePlugin,
    IcoImagePlugin,
    Image,
    ImageOps,
    Jpeg2KImagePlugin,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FRAMES = 1000
# A progressive JPEG from a camera or an encoder has about ten scans (mozjpeg's scripts: up to
# twenty; an MPO with its second image: twice that); a hundred leaves room for any of them.
DEFAULT_MAX_SCANS = 100

# Pillow's names for variants of an allowed format.
FORMAT_ALIASES = {"MPO": "JPEG"}
# Formats whose frame count is a header field; the others are counted by seeking.
_COUNT_IN_HEADER = {"PNG", "WEBP", "MPO"}
# Formats a refused file may be named as, from its magic bytes (each has a prefix test in Pillow).
_NAMEABLE = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "ICO", "JPEG2000")


class ImageRejected(ValueError):
    """Bytes that are not an acceptable image; `status` and `code` are what an HTTP client gets.

    `header` holds what was read before the rejection (format, size, frames), when anything was.
    """

    def __init__(self, status: int, code: str, detail: str, header: Header | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.header = status, code, detail, header

    def __reduce__(self):  # so the rejection crosses a process boundary intact
        return type(self), (self.status, self.code, self.detail, self.header)


@dataclass(frozen=True)
class ImageLimits:
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES
    max_scans: int = DEFAULT_MAX_SCANS

    @classmethod
    def of(
        cls,
        formats: Iterable[str] = DEFAULT_FORMATS,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        max_scans: int = DEFAULT_MAX_SCANS,
    ) -> ImageLimits:
        formats = tuple(f.upper() for f in formats)
        return cls(formats, int(max_bytes), int(max_pixels), int(max_frames), int(max_scans))

    @property
    def allowed(self) -> str:
        return ", ".join(self.formats)


DEFAULT_LIMITS = ImageLimits()


@dataclass
class Header:
    """What the headers say, read without decoding pixels. `pixels` sums width x height over frames."""

    format: str
    width: int
    height: int
    frames: int
    pixels: int
    mode: str


@dataclass
class DecodedImage:
    image: Image.Image  # the first frame, loaded (smaller than width x height after a JPEG draft)
    format: str
    width: int  # as stored, before any EXIF rotation or draft
    height: int
    frames: int
    mode: str = ""
    info: dict = field(default_factory=dict)


def _undecodable(detail: str, header: Header | None = None) -> ImageRejected:
    return ImageRejected(422, "undecodable", detail, header)


def name_format(prefix: bytes) -> str | None:
    """The format a file's first bytes announce, by Pillow's magic-byte tests alone (no parsing)."""
    for fmt in _NAMEABLE:
        accept = Image.OPEN.get(fmt, (None, None))[1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a prefix test that trips over garbage names nothing
            continue
    return None


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[f for f in limits.formats if f != "MPO"])
    except UnidentifiedImageError:
        named = name_format(data[:64])
        if named is None:
            detail = f"not an image in a known format; allowed formats: {limits.allowed}"
        elif named in limits.formats:
            raise _undecodable(f"the {named} header is corrupt") from None
        else:
            detail = f"{named} images are not accepted; allowed formats: {limits.allowed}"
        header = Header(named, 0, 0, 0, 0, "") if named else None
        raise ImageRejected(415, "unsupported_format", detail, header) from None


def _describe(header: Header) -> str:
    frames = f" x {header.frames} frame(s)" if header.frames > 1 else ""
    return f"{header.width}x{header.height} pixels{frames}"


def read_header(image: Image.Image, limits: ImageLimits) -> Header:
    """Format, size and frames of an opened image; frames bounded, pixels judged before decoding."""
    fmt = FORMAT_ALIASES.get(image.format, image.format or "")
    header = Header(fmt, image.width, image.height, 1, image.width * image.height, image.mode)
    if image.format in _COUNT_IN_HEADER:
        header.frames = max(1, int(getattr(image, "n_frames", 1) or 1))
        header.pixels *= header.frames
    else:
        while header.frames <= limits.max_frames and header.pixels <= limits.max_pixels:
            try:
                image.seek(header.frames)
            except EOFError:
                break
            header.frames += 1
            header.pixels += image.width * image.height
        if header.frames > 1:
            image.seek(0)
    if header.frames > limits.max_frames:
        raise _undecodable(f"more than {limits.max_frames:,} frames; the limit is {limits.max_frames:,}", header)
    if header.pixels > limits.max_pixels:
        raise _undecodable(
            f"{_describe(header)} is over the limit of {limits.max_pixels:,} pixels (not decoded)", header
        )
    return header


def check_scans(data: bytes, header: Header, limits: ImageLimits) -> None:
    """Reject a JPEG with more scans than `limits.max_scans`. Inside entropy-coded data a 0xFF
    byte is always followed by 0x00 or a restart marker, so every FF DA pair outside metadata
    is a scan header; pairs inside metadata can only raise the count, never hide a scan."""
    if header.format != "JPEG":
        return
    scans = data.count(b"\xff\xda")
    if scans > limits.max_scans:
        raise _undecodable(
            f"{scans:,} JPEG scans (progressive passes, each a full decode); the limit is {limits.max_scans:,}",
            header,
        )


def light_enough(data: bytes, limits: ImageLimits, light: ImageLimits) -> bool:
    """Whether the header promises a quick decode: within `light`'s pixels, frames and scans.

    Reads the header only, counting frames no further than `light.max_frames`. Raises
    `ImageRejected` where the header alone already breaks `limits` (a bomb is refused here,
    cheaply, wherever it would have been decoded).
    """
    if len(data) > limits.max_bytes or not data:
        return True  # decode_image names the problem at once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = _open(data, limits)
            header = read_header(image, replace(limits, max_frames=light.max_frames))
        except ImageRejected as e:
            if e.header is not None and e.header.frames > light.max_frames:
                return False
            raise
        except Exception:
            return True  # a header Pillow cannot read: decode_image reports it
    if header.format == "JPEG" and data.count(b"\xff\xda") > light.max_scans:
        check_scans(data, header, limits)
        return False
    return header.pixels <= light.max_pixels


def _load(image: Image.Image, header: Header, all_frames: bool, target_size: tuple[int, int] | None) -> None:
    if target_size and header.format == "JPEG" and not all_frames:
        # The JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding: a 40 MP photo wanted at
        # 224 px costs a sixty-fourth of the work and memory.
        image.draft(image.mode if image.mode in ("RGB", "L") else None, target_size)
    if all_frames:
        for i in range(1, header.frames):
            image.seek(i)
            image.load()
        if header.frames > 1:
            image.seek(0)
    image.load()


def decode_image(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    all_frames: bool = False,
    target_size: tuple[int, int] | None = None,
) -> DecodedImage:
    """Bytes -> the first frame, loaded; or `ImageRejected`. Never any other exception.

    `all_frames` decodes every frame (validation: a broken later frame is caught); `target_size`
    lets a JPEG decode at a reduced scale no smaller than it (serving, when only a small image
    is needed; off by default so validation sees every pixel).
    """
    if len(data) > limits.max_bytes:
        raise ImageRejected(413, "too_large", f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    if not data:
        raise _undecodable("empty (0 bytes); send the image bytes")
    header, image = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd metadata ("Corrupt EXIF data") are not errors
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = _open(data, limits)
            header = read_header(image, limits)
            check_scans(data, header, limits)
            _load(image, header, all_frames, target_size)
        except ImageRejected:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise _undecodable(f"too large to decode safely ({e})", header) from None
        except MemoryError:
            raise _undecodable("decoding needs more memory than a decoder may use", header) from None
        except Exception as e:  # any decoder error on hostile bytes is the input's fault
            name = FORMAT_ALIASES.get(image.format, image.format) if image else name_format(data[:64])
            what = f"the {name} data" if name else "the image"
            raise _undecodable(f"{what} does not decode: {type(e).__name__}: {e}".rstrip(": "), header) from None
    return DecodedImage(image, header.format, header.width, header.height, header.frames, header.mode)


def upright(image: Image.Image) -> Image.Image:
    """The image as it should be displayed (EXIF orientation applied); as stored if its EXIF is unusable.

    Returns the image itself when it needs no turning (no copy).
    """
    try:
        if image.getexif().get(0x0112, 1) not in (2, 3, 4, 5, 6, 7, 8):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block loses its orientation, never the image
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB from any PIL image: EXIF rotation applied, transparency flattened on black."""
    image = upright(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale the full range to 8 bits instead of clipping at 255.
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")
