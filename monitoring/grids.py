"""Image grids for a drift breakdown: what production sent, next to what the version learnt from.

For each flagged class and cluster (`monitoring.breakdown`), up to `drift.grid_images` captured
production images of the group, novel ones first, in the top row; under each, the baseline image
whose embedding is nearest to it (a training or validation image, from `data.raw`), with its
label. A person sees the shift at a glance: dark blurred sevens above clean ones.

Only images the capture store kept can be drawn (`monitoring.capture`); a group whose images
were not kept gets no grid, and the breakdown says so. The grids are PNG files under
`<report_dir>/grids/`; the HTML section embeds them, so the report stays one self-contained file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.novelty import _normalised
from lensops.core.capture import CaptureStore
from lensops.core.settings import Settings

from .breakdown import Groups


def slug(name: str) -> str:
    """A file-name-safe form of a class name (any string can be a label); two names never share one."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60]
    if cleaned == name:
        return cleaned
    return f"{cleaned or 'class'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def write_grids(
    settings: Settings, baseline: pd.DataFrame, log: pd.DataFrame, summary: dict[str, Any], groups: Groups, folder: Path
) -> list[Path]:
    """One grid per flagged class and cluster; each group's entry in `summary` gains `grid` (or why none)."""
    n = settings.drift.grid_images
    if n == 0 or "sha256" not in log:
        return []
    capture = settings.monitoring.capture
    store = CaptureStore(settings.path(capture.dir), max_bytes=capture.max_bytes)
    raw = settings.path(settings.data.raw)
    reference = _normalised(np.stack(baseline["embedding"].to_numpy()))
    labels = log["label"].astype(str).to_numpy()
    written = []
    targets = [
        (c, labels == c["label"], f"class-{slug(c['label'])}", f"predicted {c['label']}") for c in summary["classes"]
    ]
    targets += [
        (c, groups.log_clusters == c["cluster"], f"cluster-{c['cluster']}", f"cluster {c['cluster']}")
        for c in summary["clusters"]
    ]
    for entry, members, name, title in targets:
        if not entry["flagged"]:
            continue
        picked = _captured(log, members, groups.novel, store, n)
        if not picked:
            entry["grid"] = None
            entry["grid_note"] = "none of its images was captured (monitoring.capture)"
            continue
        nearest = _nearest(reference, log, picked)
        path = folder / "grids" / f"{name}.png"
        _draw(path, title, log, picked, [baseline.iloc[i] for i in nearest], store, raw)
        entry["grid"] = str(path)
        written.append(path)
    return written


def _captured(log: pd.DataFrame, members: np.ndarray, novel: np.ndarray, store: CaptureStore, n: int) -> list[int]:
    """Up to n positions of captured images in the group, novel ones first, one per distinct image."""
    positions = np.flatnonzero(members)
    positions = sorted(positions, key=lambda i: (not novel[i], i))
    picked, seen = [], set()
    for i in positions:
        sha = log["sha256"].iloc[i]
        if isinstance(sha, str) and sha not in seen and store.get(sha) is not None:
            picked.append(int(i))
            seen.add(sha)
            if len(picked) == n:
                break
    return picked


def _nearest(reference: np.ndarray, log: pd.DataFrame, picked: list[int]) -> list[int]:
    current = _normalised(np.stack(log["embedding"].iloc[picked].to_numpy()))
    return [int(i) for i in (current @ reference.T).argmax(axis=1)]


def _open(path: Path | None):
    from data.transforms import decode, to_rgb

    if path is None or not path.is_file():
        return None
    try:
        return np.asarray(to_rgb(decode(path.read_bytes())))
    except Exception:  # a grid never fails a drift job over one unreadable image
        return None


def _draw(path: Path, title: str, log: pd.DataFrame, picked: list[int], nearest, store, raw: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(picked)
    figure, axes = plt.subplots(2, columns, figsize=(1.6 * columns + 0.6, 3.8), squeeze=False)
    for column, (i, base) in enumerate(zip(picked, nearest, strict=True)):
        cells = [
            (_open(store.get(log["sha256"].iloc[i])), f"said {log['label'].iloc[i]} ({log['score'].iloc[i]:.2f})"),
            (_open(raw / str(base["path"])), f"learnt: {base['label']}"),
        ]
        for row, (image, caption) in enumerate(cells):
            axis = axes[row][column]
            axis.axis("off")
            if image is None:
                axis.text(0.5, 0.5, "not found", ha="center", va="center", fontsize=7)
            else:
                axis.imshow(image)
            axis.set_title(caption, fontsize=7)
    figure.suptitle(f"{title}: production (top), nearest baseline image (bottom)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


# --- the HTML section ---------------------------------------------------------------------------


def breakdown_html(summary: dict[str, Any]) -> str:
    """The breakdown as an HTML section: two tables and the grids, embedded."""
    class_columns = ["label", "n_production", "baseline_share", "production_share", "novel_share", "moved", "why"]
    cluster_columns = ["cluster", "n_baseline", "n_production", "baseline_share", "production_share", "share_ratio"]
    parts = ['<section style="font-family:sans-serif;margin:16px">', "<h2>Drift breakdown</h2>"]
    parts += [_table("Predicted classes (flagged first)", summary["classes"], class_columns)]
    parts += [_table("Embedding clusters (flagged first)", summary["clusters"], [*cluster_columns, "dominant_labels"])]
    for entry in [*summary["classes"], *summary["clusters"]]:
        grid = entry.get("grid")
        if grid and Path(grid).is_file():
            data = base64.b64encode(Path(grid).read_bytes()).decode()
            parts.append(f'<p><img alt="{html.escape(Path(grid).stem)}" src="data:image/png;base64,{data}"></p>')
    parts.append("</section>")
    return "\n".join(parts)


def _table(caption: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        style = ' style="background:#fde2e2"' if row.get("flagged") else ""
        cells = "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns)
        body.append(f"<tr{style}>{cells}</tr>")
    rows_html = "".join(body)
    table = f'<table border="1" cellpadding="4"><caption>{html.escape(caption)}</caption>'
    return f"{table}<tr>{head}</tr>{rows_html}</table>"


def insert_section(report: Path, section: str) -> None:
    """Put the section at the top of an HTML report's body (at the end where it has none)."""
    text = report.read_text(encoding="utf-8")
    match = re.search(r"<body[^>]*>", text, flags=re.IGNORECASE)
    text = text[: match.end()] + section + text[match.end() :] if match else text + section
    temporary = report.with_name(f".{report.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(report)
