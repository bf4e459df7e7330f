"""Real image files, good and bad, written for the tests (no fixtures checked in)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def write_class_folders(raw: Path, classes: dict[str, int], *, size=(32, 32), fmt="PNG", seed=0) -> list[Path]:
    """`classes` maps label -> number of distinct noise images to write."""
    paths = []
    ext = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
    for c, (label, n) in enumerate(sorted(classes.items())):
        folder = raw / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = folder / f"img_{i:04d}{ext}"
            p.write_bytes(encode(noise_image(seed * 100_000 + c * 1000 + i, size), fmt))
            paths.append(p)
    return paths


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header promising width x height pixels, with a tiny compressed body.

    It decodes to 400 million pixels but is only a few hundred kilobytes: the classic
    decompression bomb, which a validator must reject from the header alone.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" + b"\x00" * width
    body = zlib.compress(row * 64, 9)  # only the first rows: enough to look like an image
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
