"""Provenance: where the images of a dataset came from, versioned with the dataset itself.

`lensops label import` writes one JSON-lines file per imported batch under
`data/raw/<label.provenance_dir>/` (by default `.provenance/provenance-<batch>.jsonl`). The folder
is hidden, so validation never mistakes it for a class, and it is inside `data/raw`, so `dvc add
data/raw` versions it with the images it describes and `lensops data diff` shows it.

One record per imported image:

| field | meaning |
| --- | --- |
| `path` | the image's path under `data/raw` |
| `sha256`, `label` | its content and the label a person gave it |
| `source` | `production` for images that came from serving's capture store |
| `batch` | the labelling batch it came in |
| `labelled_by`, `imported_at` | who labelled it, when it was imported |
| `first_seen`, `requests`, `request_ids` | when production first sent it, how often, and some of the requests |
| `model_version`, `predicted`, `score` | what the served version answered |
| `relabelled_from`, `previous_path` | a relabel (an image moved to another class folder): its label and path before |

Images without a record are `original`. `prepare` copies `source` and `batch` into the prepared
manifest, so a review can judge a challenger per slice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

ORIGINAL = "original"
PRODUCTION = "production"
PREFIX = "provenance-"


def folder_of(raw: Path, provenance_dir: str = ".provenance") -> Path:
    return Path(raw) / provenance_dir


def write_batch(raw: Path, batch: str, records: Iterable[dict], provenance_dir: str = ".provenance") -> Path:
    """The batch's records as one JSON-lines file, written whole (temporary name, fsync, rename)."""
    folder = folder_of(raw, provenance_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{PREFIX}{batch}.jsonl"
    temporary = folder / f".{target.name}.tmp"
    with open(temporary, "w") as f:
        for record in records:
            f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    return target


def read(raw: Path, provenance_dir: str = ".provenance") -> pd.DataFrame:
    """Every provenance record under `raw`, one row per image path (the latest record wins)."""
    rows = []
    for path in sorted(folder_of(raw, provenance_dir).glob(f"{PREFIX}*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a damaged line is skipped: provenance informs, it never blocks a pipeline
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                rows.append(record)
    if not rows:
        return pd.DataFrame(columns=["path", "sha256", "source", "batch"])
    return pd.DataFrame(rows).drop_duplicates("path", keep="last").reset_index(drop=True)


def attach(manifest: pd.DataFrame, raw: Path, provenance_dir: str = ".provenance") -> pd.DataFrame:
    """The manifest with `source` and `batch` columns: from provenance where a record names the image."""
    records = read(raw, provenance_dir)
    known = records.set_index("path") if len(records) else None
    frame = manifest.copy()
    if known is None:
        frame["source"], frame["batch"] = ORIGINAL, ""
        return frame
    # A record counts only while the image still has the content it describes.
    content = frame["path"].map(known["sha256"]) if "sha256" in known else None
    matches = frame["path"].isin(known.index) & ((content == frame["sha256"]) if content is not None else True)
    frame["source"] = frame["path"].map(known["source"]).where(matches, ORIGINAL).fillna(ORIGINAL).astype(str)
    batch = frame["path"].map(known["batch"]) if "batch" in known else pd.Series("", index=frame.index)
    frame["batch"] = batch.where(matches, "").fillna("").astype(str)
    return frame
