"""The image manifest: one row of facts per entry under a `raw/<label>/...` folder.

Every file is read once, in a worker process of a `DecoderPool`: its bytes give the sha256,
and the same bytes go through the shared decoder (`data.images`) with every frame decoded, so a
truncated or corrupt file is caught here rather than in the middle of a training run. The
same pass measures how the image looks (`data.quality`: brightness, contrast, blur, aspect
ratio, pHash). A worker that overruns `validate.decode_timeout_s`, runs out of its memory
budget or dies marks only its file bad; the parent holds rows, never image bytes.

Entries that are not regular files (FIFOs, sockets, links out of the folder; see `data.files`)
and files over `validate.max_bytes` get a row with the reason and are never opened.

The manifest records facts only; `data.validation` decides what is acceptable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import pandas as pd
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lensops.core.errors import NotFound
from lensops.core.settings import ValidateSettings

from .decoder_pool import DecoderPool, available_cpus
from .files import Entry, list_entries
from .images import FORMAT_ALIASES, ImageLimits, ImageRejected
from .inspection import COLUMNS, entry_row, inspect_entries, inspect_entry

__all__ = ["COLUMNS", "available_cpus", "build_manifest", "inspect_entry", "read_manifest", "write_manifest"]

# Bumped when the way rows are computed changes, so an older manifest is never reused.
_ROWS_VERSION = 2


def limits_of(cfg: ValidateSettings) -> ImageLimits:
    sizes = {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels}
    return ImageLimits.of(cfg.formats, **sizes, max_frames=cfg.max_frames, max_scans=cfg.max_scans)


def _progress(total: int, enabled: bool) -> Progress:
    return Progress(
        TextColumn("inspecting images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled or total < 500,
        transient=True,
    )


# Small files go to the workers in batches (one round trip per batch instead of per file). A
# batch shares one file's deadline; a batch that overruns it, runs out of memory or kills its
# worker is sent again one file at a time, so every file is still judged by itself.
_BATCH_FILES = 32
_BATCH_BYTES = 4 * 2**20


def _batches(entries: list[Entry], workers: int) -> list[list[Entry]]:
    most = max(1, min(_BATCH_FILES, len(entries) // (workers * 4)))  # enough batches to keep all busy
    batches: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if batches[-1] and (len(batches[-1]) >= most or size + e.size > _BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(e)
        size += e.size
    return [b for b in batches if b]


def _failed(batch: list[Entry], error: BaseException) -> list[dict]:
    detail = error.detail if isinstance(error, ImageRejected) else f"inspection failed ({type(error).__name__})"
    return [entry_row(e, detail) for e in batch]


def _inspect_isolated(entries: list[Entry], limits: ImageLimits, cfg: ValidateSettings, workers, meanwhile, bar):
    """Every file in a worker under the deadline and the memory cap; a failed worker fails one row."""
    rows: list[dict] = []
    with DecoderPool(workers=workers, timeout_s=cfg.decode_timeout_s, memory_mb=cfg.worker_memory_mb) as pool:
        pending = {pool.submit(inspect_entries, b, limits): b for b in _batches(entries, pool.workers)}
        if meanwhile:
            meanwhile()
        with bar:
            task = bar.add_task("inspect", total=len(entries))
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    batch = pending.pop(future)
                    try:
                        rows += future.result()
                    except Exception as e:  # the worker overran, ran out of memory or died
                        if len(batch) > 1:
                            pending.update({pool.submit(inspect_entries, [one], limits): [one] for one in batch})
                            continue
                        rows += _failed(batch, e)
                    bar.advance(task, len(batch))
    return rows


def _reused(entries: list[Entry], reuse: pd.DataFrame | None) -> tuple[list[dict], list[Entry]]:
    if reuse is None or not len(reuse):
        return [], entries
    known = {(r["path"], r["bytes"], r["mtime_ns"]): r for r in reuse.to_dict("records")}
    rows, todo = [], []
    for e in entries:
        hit = None if e.problem else known.get((e.rel, e.size, e.mtime_ns))
        (rows.append(hit) if hit else todo.append(e))
    return rows, todo


def build_manifest(
    raw: Path,
    *,
    cfg: ValidateSettings | None = None,
    max_pixels: int | None = None,
    workers: int | None = None,
    isolate: bool = True,
    progress: bool = True,
    reuse: pd.DataFrame | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> pd.DataFrame:
    """Inspect every entry under `raw`; one row per entry, sorted by path.

    `cfg` gives the limits, deadline and memory budget (`max_pixels` overrides its pixel limit).
    `reuse` is an earlier manifest built with the same limits: rows whose path, size and
    modification time are unchanged are taken from it instead of decoding the file again.
    `meanwhile` is called once in this process while the workers decode (the validator loads
    its expectation suite there). `isolate=False` inspects in this process, for trusted files only.
    """
    cfg = cfg or ValidateSettings()
    if max_pixels is not None:
        cfg = cfg.model_copy(update={"max_pixels": max_pixels})
    raw = Path(raw)
    if not raw.is_dir():
        raise NotFound(
            f"{raw} is not a folder. Put images in {raw}/<label>/<image>, or run `lensops data demo` for the digits."
        )
    limits = limits_of(cfg)
    entries = list_entries(raw, cfg.max_bytes)
    rows, todo = _reused(entries, reuse)
    rows += [entry_row(e) for e in todo if e.problem]
    todo = [e for e in todo if not e.problem]
    bar = _progress(len(todo), progress)
    if isolate and todo:
        rows += _inspect_isolated(todo, limits, cfg, workers or cfg.workers, meanwhile, bar)
    else:
        if meanwhile:
            meanwhile()
        rows += [inspect_entry(e, limits) for e in todo]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["ext_format"] = frame["extension"].map(ext_format)
    return frame.astype(COLUMNS).sort_values("path", ignore_index=True)


def ext_format(extension: str) -> str:
    """The format a file name promises (from its extension)."""
    if not extension:
        return "(no extension)"
    fmt = Image.registered_extensions().get(extension)
    return FORMAT_ALIASES.get(fmt, fmt) if fmt else f"(not an image extension: {extension})"


def _key(cfg: ValidateSettings) -> str:
    fields = ("formats", "max_bytes", "max_pixels", "max_frames", "max_scans", "decode_timeout_s", "worker_memory_mb")
    return json.dumps({"rows": _ROWS_VERSION, **{f: getattr(cfg, f) for f in fields}}, sort_keys=True)


def write_manifest(frame: pd.DataFrame, path: Path, *, cfg: ValidateSettings) -> None:
    """Write atomically (temporary name, then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.attrs = {"max_pixels": cfg.max_pixels, "key": _key(cfg)}
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_manifest(
    path: Path, *, cfg: ValidateSettings | None = None, max_pixels: int | None = None
) -> pd.DataFrame | None:
    """An earlier manifest, or None when absent, unreadable, or built with other limits than `cfg`."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError):
        return None
    if list(frame.columns) != list(COLUMNS):
        return None
    if cfg is not None and frame.attrs.get("key") != _key(cfg):
        return None
    if max_pixels is not None and frame.attrs.get("max_pixels") != max_pixels:
        return None
    return frame.astype(COLUMNS)
