"""What `lensops data audit` writes, under `audit.report_dir` (default `reports/audit/`).

- `audit.csv`: every image, most suspect first: rank, path, given and predicted label, label
  score, issue (label, outlier, near_duplicate, joined by `+`), outlier and near-duplicate scores.
- `suspects.png`: the top `audit.top` images with their rank, given and predicted labels and issue.
- `labels.csv`, `images/`, `batch.json`: the top suspects as a labelling batch that `lensops label
  import` reads, `label` pre-filled with the given label. Change it where it is wrong and import:
  the image moves to its new class folder, with provenance (see `data.labels`).
- `audit.json`: counts per issue, folds, epochs, out-of-sample accuracy, seconds.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from data.figures import Tile, image_grid

from .audit_issues import ISSUES

LABEL_COLUMNS = ["sha256", "file", "path", "given_label", "predicted", "score", "label_score", "issue", "rank", "label"]


@dataclass
class AuditReport:
    table: pd.DataFrame  # every image, ranked (audit.csv)
    top: pd.DataFrame  # the suspects shown, drawn and put in labels.csv
    folder: Path
    summary: dict[str, Any]


def write_report(
    table: pd.DataFrame, raw: Path, folder: Path, meta: dict[str, Any], *, top: int, started: float
) -> AuditReport:
    from lensops.core.registry import now

    folder.mkdir(parents=True, exist_ok=True)
    suspects = table.head(top)
    table.to_csv(folder / "audit.csv", index=False, float_format="%.6g")
    tiles = [
        Tile(raw / r.path, f"#{r.rank} {r.given_label} -> {r.predicted_label}\n{r.issue or 'none'}")
        for r in suspects.itertuples(index=False)
    ]
    image_grid(tiles, folder / "suspects.png", title=f"top {len(tiles)} suspects: given -> predicted (out of sample)")
    batch = f"audit-{now().replace(':', '').replace('-', '')}"
    write_labelling_batch(suspects, raw, folder, batch)
    counts = {name: int(table["issue"].str.split("+").apply(lambda flags, n=name: n in flags).sum()) for name in ISSUES}
    summary = {
        "n_images": len(table),
        "issues": counts,
        "flagged": int((table["issue"] != "").sum()),
        "top": len(suspects),
        "batch": batch,
        **meta,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (folder / "audit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return AuditReport(table, suspects, folder, summary)


def write_labelling_batch(suspects: pd.DataFrame, raw: Path, folder: Path, batch: str) -> Path:
    """`labels.csv` (with copies of the images in `images/`) and `batch.json`, as `lensops label import` reads them.

    `given_label` is the label the image has in data/raw now: the import moves an image whose
    `label` differs from it, and refuses a row whose image has since been relabelled otherwise.
    """
    images = folder / "images"
    shutil.rmtree(images, ignore_errors=True)  # the previous audit's suspects
    images.mkdir(parents=True)
    rows = []
    for r in suspects.itertuples(index=False):
        file = f"images/{r.sha256[:20]}{Path(r.path).suffix.lower()}"
        shutil.copyfile(raw / r.path, folder / file)
        rows.append(
            {
                "sha256": r.sha256,
                "file": file,
                "path": r.path,
                "given_label": r.given_label,
                "predicted": r.predicted_label,
                "score": round(float(r.predicted_probability), 4),
                "label_score": round(float(r.label_score), 4),
                "issue": r.issue,
                "rank": int(r.rank),
                "label": r.given_label,  # pre-filled: a person confirms it or writes the right one
            }
        )
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"batch": batch, "kind": "audit", "images": len(rows), "source": "audit"}
    (folder / "batch.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
