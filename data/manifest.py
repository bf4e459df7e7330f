"""The image manifest: one row of facts per file under a `raw/<label>/...` folder.

Every file is read once: its bytes give the sha256, and the same bytes are decoded in full,
so a truncated or corrupt file is caught here rather than in the middle of a training run.
A file whose header announces more pixels than the limit is never decoded (a decompression
bomb costs nothing to reject). Inspection is spread over all cores in a process pool.

The manifest records facts only; `data.validation` decides what is acceptable.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lensops.core.errors import NotFound

COLUMNS = {
    "path": "string",  # relative to the raw folder, with "/" separators
    "label": "string",  # the class folder; null for a file outside any class folder
    "extension": "string",
    "ext_format": "string",  # the format the file name promises
    "format": "string",  # the format read from the bytes; null when not an image
    "width": "Int64",
    "height": "Int64",
    "frames": "Int64",
    "pixels": "Int64",  # width x height x frames
    "mode": "string",
    "bytes": "int64",
    "mtime_ns": "int64",
    "sha256": "string",
    "decoded": "bool",  # every frame decoded in full
    "error": "string",  # why the file could not be read as an image; null when it could
}

# Pillow names some JPEG variants differently from the file extension they carry.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Parallel inspection pays off only once a pool's start-up cost is amortised.
_MIN_FILES_FOR_POOL = 256


def list_image_files(raw: Path) -> list[Path]:
    """Every regular file below `raw`, sorted, skipping hidden files and folders (`.DS_Store`, `.git`)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(raw):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(files)


def _ext_format(extension: str) -> str:
    if not extension:
        return "(no extension)"
    fmt = Image.registered_extensions().get(extension)
    return _FORMAT_ALIASES.get(fmt, fmt) if fmt else f"(not an image extension: {extension})"


def inspect_file(path: Path, raw: Path, max_pixels: int) -> dict:
    """Facts about one file. Never raises for a bad file: the problem goes into `error`."""
    rel = path.relative_to(raw)
    stat = path.stat()
    extension = path.suffix.lower()
    row = {
        "path": rel.as_posix(),
        "label": rel.parts[0] if len(rel.parts) > 1 else None,
        "extension": extension,
        "ext_format": _ext_format(extension),
        "format": None,
        "width": None,
        "height": None,
        "frames": None,
        "pixels": None,
        "mode": None,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": None,
        "decoded": False,
        "error": None,
    }
    try:
        data = path.read_bytes()
    except OSError as e:
        row["error"] = f"cannot read file: {e.strerror or e}"
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = _FORMAT_ALIASES.get(im.format, im.format)
            frames = int(getattr(im, "n_frames", 1) or 1)
            row.update(format=fmt, width=im.width, height=im.height, frames=frames, mode=im.mode)
            row["pixels"] = im.width * im.height * frames
            if row["pixels"] > max_pixels:
                return row  # a decompression bomb is judged from its header alone
            for i in range(frames):
                im.seek(i)
                im.load()
            row["decoded"] = True
    except Image.UnidentifiedImageError:
        row["error"] = "not an image Pillow can identify"
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        row["error"] = f"does not decode: {e}"
    return row


def _inspect_chunk(paths: Sequence[Path], raw: Path, max_pixels: int) -> list[dict]:
    # The manifest applies its own pixel limit from the header, so Pillow's built-in bomb
    # check (a warning, then an error, at a fixed limit) is switched off in the workers.
    Image.MAX_IMAGE_PIXELS = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return [inspect_file(p, raw, max_pixels) for p in paths]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity mask
        return os.cpu_count() or 1


def _chunks(items: Sequence[Path], size: int) -> Iterable[Sequence[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def build_manifest(
    raw: Path,
    *,
    max_pixels: int,
    workers: int | None = None,
    progress: bool = True,
    reuse: pd.DataFrame | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> pd.DataFrame:
    """Inspect every file under `raw`; one row per file, sorted by path.

    `reuse` is an earlier manifest built with the same `max_pixels`: rows whose path, size and
    modification time are unchanged are taken from it instead of decoding the file again.
    `meanwhile` is called once in this process while the workers decode (the validator loads
    its expectation suite there), or before decoding when the folder is too small for a pool.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise NotFound(
            f"{raw} is not a folder. Put images in {raw}/<label>/<image>, or run `lensops data demo` for the digits."
        )
    files = list_image_files(raw)
    rows: list[dict] = []
    if reuse is not None and len(reuse):
        known = {(r.path, r.bytes, r.mtime_ns): r._asdict() for r in reuse.itertuples(index=False)}
        todo = []
        for f in files:
            st = f.stat()
            hit = known.get((f.relative_to(raw).as_posix(), st.st_size, st.st_mtime_ns))
            (rows.append(hit) if hit else todo.append(f))
        files = todo

    workers = workers or available_cpus()
    progress_bar = Progress(
        TextColumn("inspecting images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress or len(files) < 500,
        transient=True,
    )
    if workers == 1 or len(files) < _MIN_FILES_FOR_POOL:
        if meanwhile:
            meanwhile()
        with progress_bar as bar:
            task = bar.add_task("inspect", total=len(files))
            for chunk in _chunks(files, 64):
                rows.extend(_inspect_chunk(chunk, raw, max_pixels))
                bar.advance(task, len(chunk))
    else:
        # Several chunks per worker keep every core busy to the end. Workers are forked (no
        # re-import of the caller's __main__, unlike spawn), all at the first submit, which
        # happens before the progress bar starts its refresh thread.
        size = max(16, min(256, len(files) // (workers * 8) or 1))
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_inspect_chunk, c, raw, max_pixels): len(c) for c in _chunks(files, size)}
            if meanwhile:
                meanwhile()
            with progress_bar as bar:
                task = bar.add_task("inspect", total=len(files))
                for fut in as_completed(futures):
                    rows.extend(fut.result())
                    bar.advance(task, futures[fut])

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame = frame.astype(COLUMNS).sort_values("path", ignore_index=True)
    return frame


def write_manifest(frame: pd.DataFrame, path: Path, *, max_pixels: int) -> None:
    """Write atomically (temporary name, then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.attrs = {"max_pixels": max_pixels}
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_manifest(path: Path, *, max_pixels: int | None = None) -> pd.DataFrame | None:
    """An earlier manifest, or None when absent, unreadable or built with another pixel limit."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):
        return None
    if list(frame.columns) != list(COLUMNS):
        return None
    if max_pixels is not None and frame.attrs.get("max_pixels") != max_pixels:
        return None
    return frame.astype(COLUMNS)
