"""`lensops label export`: the captured production images most worth a person's time, as a labelling batch.

Candidates are the images the capture store holds for the served version's answers in the window,
one per content (sha256), never one already in `data/raw` nor one an earlier batch exported (the
ledger `exported.tsv` in `label.export_dir` remembers them). Each
has a novelty (distance to the version's training data, `data.novelty`) and an uncertainty (one
minus its top score). The strategies:

| strategy | picks |
| --- | --- |
| `balanced` (default) | the 4N candidates highest in novelty and uncertainty together, then N of |
| | them spread over the embedding space (greedy k-centre): a batch is not 200 copies of one image |
| `novel` | the N most novel: the images that drive the drift |
| `uncertain` | the N the model is least sure of |
| `diverse` | N spread over all candidates (greedy k-centre) |
| `random` | N at random (a baseline) |

The batch folder holds the images, `labels.csv` to fill (one row per image, an empty `label`),
`tasks.json` in Label Studio's import format with the model's answer as a pre-annotation,
`label_config.xml` for a Label Studio project, and `batch.json` (what was picked, how, from which
window). `lensops label import` reads the filled csv, or Label Studio's export, back.
"""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.novelty import NoveltyReference
from lensops.core.capture import CaptureStore
from lensops.core.errors import UsageError
from lensops.core.log_reader import scan_log
from lensops.core.registry import Registry, now
from lensops.core.settings import Settings

STRATEGIES = ("balanced", "novel", "uncertain", "diverse", "random")
LEDGER = "exported.tsv"  # sha256 and batch of every image ever exported
CSV_COLUMNS = ["sha256", "file", "predicted", "score", "novelty", "requests", "first_seen", "model_version", "label"]


@dataclass
class LabelBatch:
    batch: str
    folder: Path | None
    strategy: str
    picked: pd.DataFrame
    candidates: int
    excluded: dict[str, int] = field(default_factory=dict)


def candidates(settings: Settings, *, model: str | None, since: str | None, last: int | None):
    """(version, one row per captured image of the window with its novelty and uncertainty, what was excluded)."""
    registry = Registry.of(settings)
    with registry.open(model) as version:
        baseline, name, number, classes = version.baseline(), version.name, version.version, version.classes
    frame = scan_log(settings.path(settings.monitoring.log_dir), model_version=number, since=since, last=last).frame
    excluded: dict[str, int] = {"not_captured": int((~frame["captured"].astype(bool)).sum()) if len(frame) else 0}
    frame = frame[frame["captured"].astype(bool) & frame["sha256"].notna()]
    cfg = settings.monitoring.capture
    store = CaptureStore(settings.path(cfg.dir), max_bytes=cfg.max_bytes)
    per_image = _per_image(frame)
    per_image["path"] = [store.get(s) for s in per_image["sha256"]]
    excluded["evicted"] = int(per_image["path"].isna().sum())
    known = _known_hashes(settings)
    drop = per_image["path"].isna() | per_image["sha256"].isin(known)
    excluded["in_data_or_exported"] = int((per_image["sha256"].isin(known) & per_image["path"].notna()).sum())
    per_image = per_image[~drop].reset_index(drop=True)
    if len(per_image):
        d = settings.drift
        reference = NoveltyReference.from_settings(baseline, d)
        per_image["novelty"] = reference.novelty(np.stack(per_image["embedding"].to_numpy()))
    per_image["uncertainty"] = 1.0 - per_image["score"].astype(float)
    return {"name": name, "version": number, "classes": classes}, per_image, excluded


def _per_image(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per captured image: its latest answer, how often and since when production sent it."""
    if frame.empty:
        return pd.DataFrame(columns=["sha256", "embedding", "label", "score", "requests", "first_seen", "request_ids"])
    ordered = frame.sort_values("time")
    grouped = ordered.groupby("sha256", sort=False)
    latest = grouped.tail(1).set_index("sha256")
    return pd.DataFrame(
        {
            "sha256": latest.index,
            "embedding": latest["embedding"].to_numpy(),
            "label": latest["label"].to_numpy(),
            "score": latest["score"].to_numpy(),
            "requests": grouped.size().reindex(latest.index).to_numpy(),
            "first_seen": grouped["time"].min().reindex(latest.index).astype(str).to_numpy(),
            "request_ids": grouped["request_id"].agg(lambda ids: list(ids)[-5:]).reindex(latest.index).to_numpy(),
        }
    ).reset_index(drop=True)


def _known_hashes(settings: Settings) -> set[str]:
    """sha256 of every image already in data/raw, and of every image an earlier batch exported."""
    from data.labels import existing_labels

    known = set(existing_labels(settings.path(settings.data.raw)))
    ledger = settings.path(settings.label.export_dir) / LEDGER
    if ledger.is_file():
        known.update(line.split("\t", 1)[0] for line in ledger.read_text().splitlines() if line)
    return known


def _remember(settings: Settings, batch: str, shas) -> None:
    """Every exported image goes in the ledger, wherever its batch folder was written: none is exported twice."""
    ledger = settings.path(settings.label.export_dir) / LEDGER
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger, "a") as f:
        f.writelines(f"{sha}\t{batch}\n" for sha in shas)


def select(pool: pd.DataFrame, n: int, strategy: str, *, seed: int = 0) -> pd.DataFrame:
    """N rows of the candidates by the strategy (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if len(pool) <= n:
        return pool.assign(rank=range(len(pool)))
    if strategy == "novel":
        picked = pool.sort_values("novelty", ascending=False).head(n)
    elif strategy == "uncertain":
        picked = pool.sort_values("uncertainty", ascending=False).head(n)
    elif strategy == "random":
        picked = pool.sample(n, random_state=seed)
    elif strategy == "diverse":
        picked = pool.iloc[k_centre(np.stack(pool["embedding"].to_numpy()), n, start=0)]
    else:
        priority = pool["novelty"].rank(pct=True) + pool["uncertainty"].rank(pct=True)
        shortlist = pool.assign(priority=priority).sort_values("priority", ascending=False).head(4 * n)
        picked = shortlist.iloc[k_centre(np.stack(shortlist["embedding"].to_numpy()), n, start=0)]
    return picked.assign(rank=range(len(picked)))


def k_centre(embeddings: np.ndarray, n: int, *, start: int = 0) -> list[int]:
    """Greedy k-centre: each pick is the point furthest from every earlier pick (L2-normalised embeddings)."""
    points = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    chosen = [start]
    nearest = np.linalg.norm(points - points[start], axis=1)
    while len(chosen) < min(n, len(points)):
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


def export_batch(
    settings: Settings,
    *,
    n: int | None = None,
    strategy: str | None = None,
    since: str | None = None,
    last: int | None = None,
    model: str | None = None,
    out: Path | None = None,
) -> LabelBatch:
    """Pick and write a labelling batch; a batch with no candidate writes nothing."""
    cfg = settings.label
    strategy, n = strategy or cfg.strategy, n or cfg.batch_size
    info, pool, excluded = candidates(settings, model=model, since=since, last=last)
    picked = select(pool, n, strategy)
    batch = f"batch-{now().replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:6]}"
    if picked.empty:
        return LabelBatch(batch, None, strategy, picked, len(pool), excluded)
    folder = (out or settings.path(cfg.export_dir)) / batch
    meta = {
        "batch": batch,
        "created": now(),
        "strategy": strategy,
        "model": info,
        "window": {"since": since, "last": last},
    }
    write_batch(folder, picked, {**meta, "candidates": len(pool), "excluded": excluded}, cfg.image_url_prefix)
    _remember(settings, batch, picked["sha256"])
    return LabelBatch(batch, folder, strategy, picked, len(pool), excluded)


def write_batch(folder: Path, picked: pd.DataFrame, meta: dict[str, Any], url_prefix: str) -> None:
    """images/, labels.csv, tasks.json (Label Studio), label_config.xml and batch.json."""
    from data.images import name_format
    from data.labels import EXTENSIONS

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for row in picked.itertuples(index=False):
        data = Path(row.path).read_bytes()
        extension = EXTENSIONS.get(name_format(data[:64]) or "", ".img")
        file = f"images/{row.sha256[:20]}{extension}"
        shutil.copyfile(row.path, folder / file)
        rows.append(
            {
                "sha256": row.sha256,
                "file": file,
                "predicted": row.label,
                "score": round(float(row.score), 4),
                "novelty": round(float(row.novelty), 3),
                "requests": int(row.requests),
                "first_seen": row.first_seen,
                "model_version": meta["model"]["version"],
                "request_ids": " ".join(row.request_ids),
                "label": "",
            }
        )
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS[:-1], "request_ids", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (folder / "tasks.json").write_text(json.dumps(label_studio_tasks(rows, meta, url_prefix), indent=2) + "\n")
    (folder / "label_config.xml").write_text(label_config(meta["model"]["classes"]))
    (folder / "batch.json").write_text(json.dumps({**meta, "images": len(rows)}, indent=2, default=str) + "\n")


def label_studio_tasks(rows: list[dict], meta: dict[str, Any], url_prefix: str) -> list[dict]:
    """Label Studio's import format: one task per image, the model's answer as a pre-annotation."""
    model = f"{meta['model']['name']} v{meta['model']['version']}"
    return [
        {
            "data": {
                "image": f"{url_prefix}{row['file']}",
                **{k: row[k] for k in ("sha256", "requests", "first_seen")},
            },
            "predictions": [
                {
                    "model_version": model,
                    "score": row["score"],
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [row["predicted"]]},
                        }
                    ],
                }
            ],
        }
        for row in rows
    ]


def label_config(classes: list[str]) -> str:
    """A Label Studio labelling interface for the batch: the image and one choice per class."""
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n'
        f'  <Choices name="label" toName="image" choice="single" showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )
