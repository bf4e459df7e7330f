"""Deterministic, stratified, leak-free train/val/test splits.

Identical images (same sha256) and near copies (pHash within
`validate.near_duplicates.max_distance`: resized, re-encoded, slightly cropped or brightened
copies) form one group and always land in the same split, so a duplicate can never put a test
image, or a near copy of it, into training. Within each class the groups are
ordered by a seeded hash of their content and cut at the requested fractions. That order
does not depend on file names, listing order or machine, and when images are added later
the existing ones mostly keep their split (only those near a cut point move), which keeps
the test set honest across dataset versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lensops.core.errors import CheckFailed, NotFound
from lensops.core.settings import PrepareSettings, Settings

from . import provenance
from .manifest import build_manifest, read_manifest
from .plots import plot_splits
from .validation import ValidationReport, load_suite_library, near_group_ids, valid_mask, validate_manifest

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.parquet"
CLASSES = "classes.json"


class DatasetInvalidError(CheckFailed):
    """The raw dataset fails validation; the message says how many files and where to look."""

    def __init__(self, report: ValidationReport, raw: Path):
        failed = [e.name for e in report.expectations if not e.success]
        super().__init__(
            f"{raw} fails validation ({', '.join(failed)}; {len(report.bad_files)} bad files). "
            "Run `lensops data validate` to see each file and why; nothing was written."
        )
        self.report = report


@dataclass
class PreparedDataset:
    manifest: pd.DataFrame
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> label -> images


def _cut(n: int, cfg: PrepareSettings) -> tuple[int, int]:
    """How many of n groups go to val and test: rounded, and at least one each when n allows."""
    n_val, n_test = round(n * cfg.val), round(n * cfg.test)
    if n >= 3:
        n_val = max(n_val, 1 if cfg.val > 0 else 0)
        n_test = max(n_test, 1 if cfg.test > 0 else 0)
    while n_val + n_test >= n and n_val + n_test > 0:  # keep at least one group for training
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def assign_splits(manifest: pd.DataFrame, cfg: PrepareSettings, near: pd.Series | None = None) -> pd.Series:
    """The split of every row (aligned with `manifest`), stratified by label.

    Rows with the same sha256 are one group; `near` (a group id per row) joins near copies too.
    A group is known by its smallest sha256, so its place in the order does not depend on
    which of its members is listed first.
    """
    key = manifest["sha256"]
    if near is not None:
        key = key.groupby(near.to_numpy()).transform("min")
    groups = manifest.assign(key=key).groupby("key", sort=False)["label"].first().to_frame()
    groups["order"] = [hashlib.sha256(f"{cfg.seed}:{sha}".encode()).hexdigest() for sha in groups.index]
    split_of: dict[str, str] = {}
    for _, members in groups.sort_values("order").groupby("label", sort=True):
        n_val, n_test = _cut(len(members), cfg)
        for i, sha in enumerate(members.index):
            split_of[sha] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return key.map(split_of).rename("split")


def prepare_dataset(
    settings: Settings, *, raw: Path | None = None, out: Path | None = None, progress: bool = True
) -> PreparedDataset:
    """Validate `raw` (reusing the last validation's manifest for unchanged files), split, write."""
    raw = raw or settings.path(settings.data.raw)
    out = out or settings.path(settings.data.prepared)
    vcfg = settings.validate_
    previous = read_manifest(settings.path(vcfg.manifest), cfg=vcfg)
    manifest = build_manifest(raw, cfg=vcfg, reuse=previous, progress=progress, meanwhile=load_suite_library)
    report = validate_manifest(manifest, vcfg, settings.data.classes or None)
    if not report.ok:
        raise DatasetInvalidError(report, raw)

    manifest = manifest[valid_mask(manifest, vcfg)].reset_index(drop=True)
    classes = sorted(manifest["label"].unique())
    prepared = manifest[["path", "label", "sha256", "format", "width", "height", "mode", "bytes"]].copy()
    prepared.insert(2, "label_index", prepared["label"].map({c: i for i, c in enumerate(classes)}).astype("int64"))
    prepared.insert(3, "split", assign_splits(manifest, settings.prepare, near_group_ids(manifest, vcfg)))
    prepared = provenance.attach(prepared, raw, settings.label.provenance_dir)  # source and batch, for slices
    counts = {
        s: {str(k): int(v) for k, v in prepared[prepared.split == s].groupby("label").size().items()} for s in SPLITS
    }

    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / MANIFEST, lambda p: prepared.to_parquet(p, index=False))
    meta = {"classes": classes, "raw": os.path.relpath(raw.resolve(), out.resolve()), "counts": counts}
    _atomic_write(out / CLASSES, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    # Split sizes as DVC metrics, so `dvc metrics diff` compares data versions.
    metrics = {"n_images": len(prepared), "n_classes": len(classes)}
    metrics.update({f"n_{s}": sum(c.values()) for s, c in counts.items()})
    metrics_path = settings.path("metrics/data.json")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(metrics_path, lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n"))
    plot_splits(prepared, settings.path("reports/data_splits.png"))
    return PreparedDataset(prepared, classes, counts)


def load_prepared(out: Path) -> tuple[pd.DataFrame, list[str], Path]:
    """The prepared manifest, its class list, and the raw folder its paths are relative to."""
    if not (out / CLASSES).is_file() or not (out / MANIFEST).is_file():
        raise NotFound(f"{out} has no prepared dataset; run `lensops data prepare` (or `dvc repro prepare`) first")
    meta = json.loads((out / CLASSES).read_text())
    return pd.read_parquet(out / MANIFEST), meta["classes"], (out / meta["raw"]).resolve()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
