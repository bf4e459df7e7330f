"""The shapes a labelled batch comes back in, read into rows for `data.labels.import_labels`.

Label Studio's export formats are read as Label Studio writes them: `JSON` (a list of tasks, each
with `data` and `annotations`, whose `result` holds `{"type": "choices", "value": {"choices":
[...]}}`) and `JSON_MIN` (a list of flat objects: the task's data fields plus the choice under the
control's name). Cancelled annotations are ignored; the most recent remaining one wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from lensops.core.errors import UsageError
from lensops.core.settings import Settings

from .labels import LabelRow, read_csv

BATCH_FILE = "batch.json"
META_COLUMNS = (
    "first_seen", "requests", "request_ids", "model_version", "predicted", "score", "capture_reason", "given_label",
)  # fmt: skip


def _batch_meta(folder: Path) -> dict[str, Any]:
    path = folder / BATCH_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        raise UsageError(f"{path} is not valid JSON") from None


def read_csv_rows(path: Path) -> tuple[list[LabelRow], dict[str, Any]]:
    """A `labels.csv`: one row per image, `file` relative to the csv's folder, `label` filled by a person."""
    try:
        records = read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} cannot be read as CSV: {e}") from None
    if records and not {"file", "label"} <= set(records[0]):
        raise UsageError(f"{path}: needs the columns `file` and `label` (it has {', '.join(records[0])})")
    rows = []
    for line, r in enumerate(records, start=2):
        image = path.parent / r["file"] if r.get("file") else None
        meta = {k: r[k] for k in META_COLUMNS if r.get(k)}
        if r.get("labelled_by"):
            meta["labelled_by"] = r["labelled_by"]
        rows.append(
            LabelRow(image, (r.get("label") or "").strip(), r.get("sha256", ""), f"{path.name} line {line}", meta)
        )
    return rows, _batch_meta(path.parent)


def read_folder_rows(folder: Path) -> list[LabelRow]:
    """`<label>/<image>`: the folder names are the labels."""
    return [
        LabelRow(p, p.parent.name, "", f"{p.parent.name}/{p.name}")
        for p in sorted(folder.glob("*/*"))
        if p.is_file() and not p.name.startswith(".") and not p.parent.name.startswith(".")
    ]


def _choice(task: dict[str, Any]) -> tuple[str, str]:
    """(label, who) of a full-JSON task's latest annotation that was not cancelled."""
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    for annotation in sorted(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or "")):
        for result in annotation.get("result") or []:
            choices = (result.get("value") or {}).get("choices") or []
            if result.get("type") == "choices" and choices:
                who = annotation.get("completed_by")
                who = who.get("email", "") if isinstance(who, dict) else str(who or "")
                return str(choices[0]), who
    return "", ""


def _image_path(reference: str, folder: Path, prefix: str) -> Path | None:
    """The local file behind a task's image reference (a path, or a Label Studio local-files URL)."""
    if not reference:
        return None
    if reference.startswith(prefix):
        reference = reference[len(prefix) :]
    elif "?d=" in reference:
        reference = parse_qs(urlparse(reference).query).get("d", [""])[0]
    reference = unquote(reference)
    candidate = Path(reference)
    return candidate if candidate.is_absolute() else folder / candidate


def read_label_studio_rows(path: Path, settings: Settings) -> tuple[list[LabelRow], dict[str, Any]]:
    """A Label Studio export (JSON or JSON_MIN); images found by the task's path, or by sha256 in the capture store."""
    from lensops.core.capture import CaptureStore

    try:
        tasks = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path} is not a Label Studio JSON export: {e}") from None
    if not isinstance(tasks, list):
        raise UsageError(f"{path}: a Label Studio export is a list of tasks, this is a {type(tasks).__name__}")
    cfg = settings.monitoring.capture
    store = CaptureStore(settings.path(cfg.dir), max_bytes=cfg.max_bytes)
    rows = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            rows.append(LabelRow(None, "", "", f"{path.name} task {i}"))
            continue
        data = task.get("data") if isinstance(task.get("data"), dict) else task  # JSON_MIN is flat
        label, who = _choice(task) if "annotations" in task else (str(task.get("label") or ""), "")
        sha = str(data.get("sha256") or "")
        image = _image_path(str(data.get("image") or ""), path.parent, settings.label.image_url_prefix)
        if (image is None or not image.is_file()) and sha:
            image = store.get(sha)
        meta = {k: data[k] for k in META_COLUMNS if data.get(k) not in (None, "")}
        if who or task.get("annotator"):
            meta["labelled_by"] = who or str(task.get("annotator"))
        rows.append(LabelRow(image, label.strip(), sha, f"{path.name} task {task.get('id', i)}", meta))
    return rows, _batch_meta(path.parent)
