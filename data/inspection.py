"""One dataset entry -> one manifest row: read safely, decoded by the shared decoder, measured.

This module runs inside the decoding workers, so it imports only what decoding needs (no
pandas): a worker starts small and its memory budget goes to pixels.
"""

from __future__ import annotations

import hashlib
import os
import warnings

from .files import Entry, FileRefused, read_entry
from .images import ImageLimits, ImageRejected, decode_image
from .quality import image_quality

COLUMNS = {
    "path": "string",  # relative to the raw folder, with "/" separators
    "label": "string",  # the class folder; null for a file outside any class folder
    "extension": "string",
    "ext_format": "string",  # the format the file name promises
    "format": "string",  # the format read from the bytes; null when not an image
    "width": "Int64",
    "height": "Int64",
    "frames": "Int64",
    "pixels": "Int64",  # width x height, summed over the frames
    "mode": "string",
    "bytes": "int64",
    "mtime_ns": "int64",
    "sha256": "string",
    "brightness": "Float64",  # data.quality: mean grey 0-255
    "contrast": "Float64",  # grey standard deviation
    "blur": "Float64",  # variance of the Laplacian
    "aspect_ratio": "Float64",  # width / height as displayed
    "phash": "string",  # 64-bit perceptual hash, hex
    "decoded": "bool",  # every frame decoded in full
    "error": "string",  # why the file could not be read as an image; null when it could
}


def entry_row(entry: Entry, error: str | None = None) -> dict:
    rel = entry.rel.split("/")
    extension = os.path.splitext(rel[-1])[1].lower()
    row = dict.fromkeys(COLUMNS)
    row.update(path=entry.rel, label=rel[0] if len(rel) > 1 else None, extension=extension)
    row.update(bytes=entry.size, mtime_ns=entry.mtime_ns, decoded=False)  # ext_format: filled by the manifest
    row["error"] = error or entry.problem
    return row


def _header_facts(row: dict, header) -> None:
    row.update(format=header.format, width=header.width, height=header.height, frames=header.frames)
    row.update(pixels=header.pixels, mode=header.mode or None)


def _rejected(row: dict, rejection: ImageRejected, limits: ImageLimits) -> None:
    """A file the decoder refused. A refused format or a bomb keeps its header facts and no
    error: the suite's `format_allowed` and `pixels_under_limit` say why, in their words."""
    header = rejection.header
    if rejection.code == "unsupported_format" and header is not None:
        row["format"] = header.format  # named from its magic bytes; never parsed
        return
    if header is not None:
        _header_facts(row, header)
        if header.pixels > limits.max_pixels:
            return
    row["error"] = rejection.detail


def inspect_entry(entry: Entry, limits: ImageLimits) -> dict:
    """Facts about one entry. Never raises for a bad file: the problem goes into `error`."""
    row = entry_row(entry)
    if entry.problem:
        return row
    try:
        data = read_entry(entry, limits.max_bytes)
    except FileRefused as e:
        row["error"] = str(e)
        return row
    row.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    try:
        decoded = decode_image(data, limits, all_frames=True)
    except ImageRejected as e:
        _rejected(row, e, limits)
        return row
    del data  # the pixels are all that is needed from here
    row.update(format=decoded.format, width=decoded.width, height=decoded.height, frames=decoded.frames)
    row.update(pixels=decoded.width * decoded.height * decoded.frames, mode=decoded.mode, decoded=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd EXIF; measuring ignores EXIF it cannot use
            row.update(image_quality(decoded.image))
    except Exception as e:  # decodes, but a measurement fails: still a file that should not train
        row.update(decoded=False, error=f"decodes, but its pixels cannot be measured ({type(e).__name__}: {e})")
    return row


def inspect_entries(entries: list[Entry], limits: ImageLimits) -> list[dict]:
    """`inspect_entry` for a batch of entries (one round trip to a worker)."""
    return [inspect_entry(e, limits) for e in entries]
