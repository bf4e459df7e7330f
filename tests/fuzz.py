"""A seeded mutation fuzzer for image decoders: valid seeds of every allowed format, and mutants.

    from tests.fuzz import mutants
    for name, data in mutants(500, seed=0):   # the same 500 (name, bytes) on every machine
        ...

Seeds are small valid images of each allowed format (PNG, JPEG, WebP, BMP, GIF, TIFF) and
their awkward variants (EXIF, ICC profile, text metadata, several frames, 16-bit, CMYK, MPO,
progressive). A mutant applies one to three mutations: bit flips, interesting bytes, a
truncation, an edited header field, a duplicated, dropped or reordered chunk (PNG chunks and
JPEG segments are cut along their structure, other formats along random slices) and garbage
metadata (a PNG chunk with a valid CRC, a JPEG APPn segment, or raw bytes). Mutant `i` of a
run depends only on (`seed`, `i`), so a failure is reproduced by its name, e.g.
`mutant(0, 1234)`.
"""

from __future__ import annotations

import functools
import io
import itertools
import random
import struct
import zlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

SIZE = (24, 16)


def _image(seed: int, mode: str = "RGB", size: tuple[int, int] = SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([xx * 9 % 256, yy * 13 % 256, (xx + yy) * 5 % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _exif(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "lensops"  # Make
    return exif.tobytes()


@functools.cache
def _icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _frames(fmt: str, n: int = 3, mode: str = "RGB", **options) -> bytes:
    frames = [_image(100 + i, mode) for i in range(n)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


def _png_with_text() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "lensops seed")
    info.add_itxt("title", "seed", zip=True)
    return _save(_image(7), "PNG", pnginfo=info)


SEEDS: dict[str, Callable[[], bytes]] = {
    "png-rgb": lambda: _save(_image(1), "PNG"),
    "png-grey": lambda: _save(_image(2, "L"), "PNG"),
    "png-rgba": lambda: _save(_image(3, "RGBA"), "PNG"),
    "png-palette": lambda: _save(_image(4, "P"), "PNG", transparency=0),
    "png-16bit": lambda: _save(Image.fromarray(np.arange(384, dtype=np.uint16).reshape(16, 24) * 170), "PNG"),
    "png-exif": lambda: _save(_image(5), "PNG", exif=_exif()),
    "png-icc": lambda: _save(_image(6), "PNG", icc_profile=_icc()),
    "png-text": _png_with_text,
    "png-animated": lambda: _frames("PNG", duration=40),
    "jpeg": lambda: _save(_image(8), "JPEG", quality=80),
    "jpeg-progressive": lambda: _save(_image(9), "JPEG", progressive=True),
    "jpeg-exif": lambda: _save(_image(10), "JPEG", exif=_exif()),
    "jpeg-icc": lambda: _save(_image(11), "JPEG", icc_profile=_icc()),
    "jpeg-cmyk": lambda: _save(_image(12, "CMYK"), "JPEG"),
    "jpeg-grey": lambda: _save(_image(13, "L"), "JPEG"),
    "mpo": lambda: _frames("MPO", n=2),
    "webp-lossy": lambda: _save(_image(14), "WEBP", quality=70),
    "webp-lossless": lambda: _save(_image(15, "RGBA"), "WEBP", lossless=True),
    "webp-exif-icc": lambda: _save(_image(16), "WEBP", exif=_exif(), icc_profile=_icc()),
    "webp-animated": lambda: _frames("WEBP", duration=40),
    "bmp": lambda: _save(_image(17), "BMP"),
    "bmp-palette": lambda: _save(_image(18, "P"), "BMP"),
    "gif": lambda: _save(_image(19, "P"), "GIF"),
    "gif-animated": lambda: _frames("GIF", mode="P", duration=40, loop=0),
    "tiff": lambda: _save(_image(20), "TIFF"),
    "tiff-deflate": lambda: _save(_image(21), "TIFF", compression="tiff_adobe_deflate"),
    "tiff-exif": lambda: _save(_image(22), "TIFF", exif=_exif()),
    "tiff-pages": lambda: _frames("TIFF", n=3),
}


@functools.cache
def seeds() -> dict[str, bytes]:
    """Every seed, built once per process."""
    return {name: make() for name, make in SEEDS.items()}


# --- structure: PNG chunks and JPEG segments --------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each chunk after the 8-byte signature; stops at the first that does not fit."""
    out, i = [], 8
    while i + 12 <= len(data):
        end = i + 12 + struct.unpack(">I", data[i : i + 4])[0]
        if end > len(data):
            break
        out.append((i, end))
        i = end
    return out


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of marker segments with a length (not the entropy-coded data)."""
    out, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] not in (0xD9, 0xDA):
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        out.append((i, min(end, len(data))))
        i = end
    return out


def _pieces(data: bytes, rng: random.Random) -> list[tuple[int, int]]:
    if data.startswith(b"\x89PNG"):
        return _png_chunks(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_segments(data)
    cuts = sorted(rng.sample(range(8, len(data)), k=min(6, max(0, len(data) - 8))))
    return list(itertools.pairwise(cuts))


# --- mutations ---------------------------------------------------------------------------------

INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF]
FIELDS = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 65_500, 1_000_000]


def flip_bits(data: bytearray, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return "bitflip"


def interesting_byte(data: bytearray, rng: random.Random) -> str:
    data[rng.randrange(len(data))] = rng.choice(INTERESTING)
    return "byte"


def truncate(data: bytearray, rng: random.Random) -> str:
    del data[rng.randrange(1, len(data)) :]
    return "truncate"


def edit_field(data: bytearray, rng: random.Random) -> str:
    """Overwrite a 2- or 4-byte field in the first 64 bytes (sizes, counts, offsets live there)."""
    width = rng.choice((2, 4))
    pos = rng.randrange(0, max(1, min(64, len(data) - width)))
    value = rng.choice(FIELDS) & (0xFFFF if width == 2 else 0xFFFFFFFF)
    data[pos : pos + width] = value.to_bytes(width, rng.choice(("big", "little")))
    return "field"


def duplicate_piece(data: bytearray, rng: random.Random) -> str:
    pieces = _pieces(bytes(data), rng)
    if not pieces:
        return flip_bits(data, rng)
    a, b = rng.choice(pieces)
    data[b:b] = data[a:b] * rng.choice((1, 2, 50))
    return "duplicate"


def drop_piece(data: bytearray, rng: random.Random) -> str:
    pieces = _pieces(bytes(data), rng)
    if not pieces:
        return truncate(data, rng)
    a, b = rng.choice(pieces)
    del data[a:b]
    return "drop"


def swap_pieces(data: bytearray, rng: random.Random) -> str:
    pieces = _pieces(bytes(data), rng)
    if len(pieces) < 2:
        return flip_bits(data, rng)
    (a, b), (c, d) = sorted(rng.sample(pieces, 2))
    if b > c:
        return flip_bits(data, rng)
    data[a:d] = data[c:d] + data[b:c] + data[a:b]
    return "swap"


def garbage_metadata(data: bytearray, rng: random.Random) -> str:
    body = rng.randbytes(rng.choice((0, 5, 200, 5000)))
    if data.startswith(b"\x89PNG"):
        kind = rng.choice((b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf", b"pHYs", b"acTL", b"fcTL"))
        if rng.random() < 0.5:
            body = b"key\x00\x00" + zlib.compress(body)
        chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        data[33:33] = chunk  # after the signature and IHDR
    elif data.startswith(b"\xff\xd8"):
        marker = rng.choice((0xE1, 0xE2, 0xED, 0xEE, 0xFE))
        if marker == 0xE1 and rng.random() < 0.7:
            body = b"Exif\x00\x00" + rng.choice((b"MM\x00*", b"II*\x00")) + body
        body = body[:65000]
        data[2:2] = bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body
    else:
        pos = rng.randrange(8, max(9, len(data)))
        data[pos:pos] = body
    return "metadata"


MUTATIONS = [flip_bits, interesting_byte, truncate, edit_field, duplicate_piece, drop_piece, swap_pieces]
MUTATIONS += [garbage_metadata]


def mutant(seed: int, index: int) -> tuple[str, bytes]:
    """Mutant `index` of run `seed`: its name (seed image and mutations) and its bytes."""
    rng = random.Random(f"lensops-fuzz:{seed}:{index}")
    names = sorted(seeds())
    base = names[index % len(names)]
    data = bytearray(seeds()[base])
    applied = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if len(data) < 16:  # too little left to mutate meaningfully
            break
        applied.append(rng.choice(MUTATIONS)(data, rng))
    return f"{base}#{seed}:{index}:{'+'.join(applied)}", bytes(data)


def mutants(n: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """`n` mutants, every seed image in turn; the same ones for the same `seed` on every machine."""
    for index in range(n):
        yield mutant(seed, index)
