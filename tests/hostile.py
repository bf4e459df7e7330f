"""Hostile and awkward files for the validator: every kind of failure a real folder holds.

`plant_hostile(raw)` writes them under `raw/<label>/` and returns {relative path: words its
reason must contain}; `plant_awkward(raw)` writes valid-but-unusual images that must pass.
The benchmark `benchmarks/hostile_validation.py` uses the same files, a thousand at a time.
"""

from __future__ import annotations

import io
import os
import socket
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tests.imagefactory import encode, noise_image, png_bomb, truncated

# The limits these files are built against (the test and the benchmark set them in params).
LIMITS = {
    "validate.max_bytes": 1_000_000,
    "validate.max_pixels": 200_000_000,
    "validate.worker_memory_mb": 256,
    "validate.decode_timeout_s": 2,
}


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(start, marker, end) of each JPEG segment; a scan's end includes its entropy-coded data."""
    out, i = [], 2
    while i < len(data) - 1:
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((i, marker, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:  # entropy data runs to the next marker that is not a stuffed byte or restart
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((i, marker, end))
        i = end
    return out


def many_scan_jpeg(size: int = 3000, copies: int = 10_000) -> bytes:
    """A progressive JPEG whose smallest scan is repeated `copies` times: each costs a pass over
    every block, so a file of a few hundred kilobytes takes seconds to decode."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 60, 200)).save(buf, format="JPEG", progressive=True, quality=80)
    data = buf.getvalue()
    scans = [s for s in jpeg_segments(data) if s[1] == 0xDA]
    small = min(scans[1:], key=lambda s: s[2] - s[0])
    last_end = scans[-1][2]
    return data[:last_end] + data[small[0] : small[2]] * copies + data[last_end:]


def heavy_modules() -> list[str]:
    """Which of the heavy libraries this process has imported (run in a decoding worker)."""
    import sys

    return [name for name in ("torch", "ray", "mlflow", "pandas") if name in sys.modules]


def many_page_tiff(pages: int = 8000) -> bytes:
    """A little-endian TIFF of `pages` 1x1 pages sharing one pixel byte, written directly
    (Pillow's own writer takes minutes for 8,000 pages)."""
    pixel_at, first_ifd, ifd_size = 8, 10, 2 + 4 * 12 + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", first_ifd) + b"\x00\x00")
    for page in range(pages):
        following = first_ifd + (page + 1) * ifd_size if page + 1 < pages else 0
        entries = [(256, 3, 1, 1), (257, 3, 1, 1), (273, 4, 1, pixel_at), (279, 4, 1, 1)]  # width, height, strip
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", following)
    return bytes(out)


def flat_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid PNG of one colour: tiny on disk, `width x height` pixels in memory."""
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def flipped(data: bytes, seed: int, n: int = 12) -> bytes:
    """Bit flips past the first 32 bytes (so the format is still recognised)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.integers(min(32, len(out) - 1), len(out), n):
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def garbage_exif_jpeg(seed: int) -> bytes:
    """A valid JPEG whose APP1 EXIF block is garbage: it must pass (orientation is ignored)."""
    jpeg = encode(noise_image(seed, (40, 30)), "JPEG")
    garbage = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + np.random.default_rng(seed).bytes(200)
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    return jpeg[:2] + segment + jpeg[2:]


def garbage_chunk_png(seed: int, kind: bytes) -> bytes:
    """A PNG with a garbage ancillary chunk (a corrupt ICC profile, text) before its pixels."""
    import zlib

    png = encode(noise_image(seed, (40, 30)), "PNG")
    body = np.random.default_rng(seed).bytes(300)
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]  # after the 8-byte signature and the 25-byte IHDR


def mpo(seed: int) -> bytes:
    """A JPEG with an MPF second image, as phones write: Pillow calls it MPO."""
    buf = io.BytesIO()
    first, second = noise_image(seed, (40, 30)), noise_image(seed + 1, (40, 30))
    first.save(buf, format="MPO", save_all=True, append_images=[second])
    return buf.getvalue()


def plant_hostile(raw: Path, outside: Path) -> dict[str, str]:
    """Write one file of each failure under `raw` (and a target for links in `outside`)."""
    jpeg, png = encode(noise_image(9001, (96, 64)), "JPEG"), encode(noise_image(9002, (96, 64)), "PNG")
    webp, gif = encode(noise_image(9003, (96, 64)), "WEBP"), encode(noise_image(9004, (96, 64)).convert("P"), "GIF")
    files = {
        "ant/truncated.jpg": (truncated(jpeg, 0.5), "does not decode"),
        "ant/truncated.png": (truncated(png, 0.5), "does not decode"),
        "ant/truncated.webp": (truncated(webp, 0.5), "WEBP"),
        "ant/truncated.gif": (truncated(gif, 0.5), "does not decode"),
        "ant/header_only.png": (png[:40], "PNG"),
        "ant/garbage_icc.png": (garbage_chunk_png(9006, b"iCCP"), "the PNG header is corrupt"),
        "ant/flipped.png": (flipped(png, 1), "does not decode"),
        "ant/zero.png": (b"", "empty file (0 bytes)"),
        "bee/text.jpg": (b"just some text, not a picture\n" * 20, "not an image in a known format"),
        "bee/bomb.png": (png_bomb(), "exceeds the 200.0 MP limit"),
        "bee/pages.tif": (many_page_tiff(), "more than 1,000 frames"),
        "bee/scans.jpg": (many_scan_jpeg(), "10,010 JPEG scans"),
        "bee/hog.png": (flat_png(10_000, 10_000), "more memory than a decoder may use"),
        "bee/huge.bmp": (b"BM" + b"\x00" * 1_200_000, "over the 1,000,000-byte limit"),
        "cat/picture.ppm": (encode(noise_image(9005), "PPM"), "format PPM is not allowed"),
    }
    for rel, (data, _) in files.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    reasons = {rel: words for rel, (_, words) in files.items()}
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(png)
    os.symlink(outside / "secret.png", raw / "cat" / "escape.png")
    os.symlink(raw / "cat" / "gone.png", raw / "cat" / "dangling.png")
    os.symlink(outside, raw / "cat" / "linked_folder")
    os.mkfifo(raw / "cat" / "pipe.png")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(raw / "cat" / "socket.png"))
    reasons.update(
        {
            "cat/escape.png": "outside the dataset folder; not read",
            "cat/dangling.png": "a dangling symbolic link",
            "cat/linked_folder": "a symbolic link to a folder",
            "cat/pipe.png": "a named pipe (FIFO), not a regular file; not read",
            "cat/socket.png": "a socket, not a regular file; not read",
        }
    )
    return reasons


def plant_awkward(raw: Path) -> list[str]:
    """Valid images that decoders or validators often get wrong; every one must pass."""
    sixteen = Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50)
    files = {
        "ant/bad_exif.jpg": garbage_exif_jpeg(9101),
        "ant/garbage_text.png": garbage_chunk_png(9102, b"tEXt"),
        "ant/phone.jpg": mpo(9103),
        "bee/grey.png": encode(noise_image(9104, (40, 30), mode="L"), "PNG"),
        "bee/sixteen_bit.png": encode(sixteen, "PNG"),
        "bee/one_bit.png": encode(noise_image(9105, (40, 30), mode="L").convert("1"), "PNG"),
        "cat/cmyk.jpg": encode(noise_image(9106, (40, 30)).convert("CMYK"), "JPEG"),
        "cat/rgba.webp": encode(noise_image(9107, (40, 30), mode="RGBA"), "WEBP"),
    }
    for rel, data in files.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    os.symlink(raw / "ant" / "img_0000.png", raw / "ant" / "link_inside.png")
    return [*files, "ant/link_inside.png"]
