"""`lensops label import`: labelled images into `data/raw`, with their provenance, as a new data version.

A batch comes back from the people who labelled it in one of three shapes:

| source | what is read |
| --- | --- |
| a `labels.csv` (as `label export` writes it) | each row's `sha256`, `file` (relative to the csv) and `label` |
| a Label Studio JSON export (`JSON` or `JSON_MIN`) | each task's `sha256`, image and annotated choice |
| a folder tree `<label>/<image>` | every image under a class folder |

Every row is checked before anything is written: the label is one of the dataset's classes, the
image exists and is an acceptable image (the shared decoder), the same image never has two labels
(in the batch, or against `data/raw`), and no row is left unlabelled (unless skipping those is
asked for). One problem refuses the whole batch, with a table of every problem; otherwise the
provenance file is written first, then each image is moved into `data/raw/<label>/` under a
content-addressed name by an atomic rename, so a second import of the same batch completes an
interrupted one and changes nothing else.

A relabel: an image already in `data/raw` under another label is refused, unless its row names
the label it replaces in a `given_label` column (as `lensops data audit` writes its batch) and that
is still the image's label in `data/raw`. Then every copy of the image is moved (an atomic rename)
from `data/raw/<given_label>/` to `data/raw/<label>/`, keeping its file name, and its provenance
record says `relabelled_from` and `previous_path` (the `source` it had is kept). A batch exported
before someone else relabelled the image is refused rather than silently overriding them.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensops.core.capture import sha256_of
from lensops.core.errors import CheckFailed, UsageError
from lensops.core.settings import Settings

from . import provenance
from .files import list_entries

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


class LabelImportRefused(CheckFailed):
    """The batch has problems; nothing was written. `problems` lists each row's."""

    prefix = "refused: "

    def __init__(self, message: str, problems: list[dict[str, str]]):
        super().__init__(message)
        self.problems = problems


@dataclass
class LabelRow:
    image: Path | None  # where the image's bytes are
    label: str
    sha256: str = ""
    where: str = ""  # the row, as a person would find it: "labels.csv line 7"
    meta: dict[str, Any] = field(default_factory=dict)  # what the batch knows of it (requests, prediction, ...)


@dataclass
class ImportResult:
    batch: str
    imported: list[dict[str, Any]]  # provenance records of the images added
    already_present: int
    skipped_unlabelled: int
    provenance_file: Path | None
    source_kind: str
    relabelled: list[dict[str, Any]] = field(default_factory=list)  # provenance records of the images moved


def read_rows(source: Path, settings: Settings) -> tuple[str, list[LabelRow], dict[str, Any]]:
    """(kind, rows, batch metadata) of a labels.csv, a Label Studio export or a folder tree."""
    from .label_sources import read_csv_rows, read_folder_rows, read_label_studio_rows

    if not source.exists():
        raise UsageError(f"{source} does not exist: give a labels.csv, a Label Studio JSON export or a folder")
    if source.is_dir():
        return "folder", read_folder_rows(source), {}
    if source.suffix.lower() == ".csv":
        return "labels.csv", *read_csv_rows(source)
    if source.suffix.lower() == ".json":
        return "label-studio", *read_label_studio_rows(source, settings)
    raise UsageError(f"{source}: not a .csv, a .json or a folder")


def class_list(settings: Settings) -> list[str]:
    """The dataset's classes: `data.classes`, else the prepared dataset's, else the class folders of data/raw."""
    if settings.data.classes:
        return list(settings.data.classes)
    prepared = settings.path(settings.data.prepared) / "classes.json"
    if prepared.is_file():
        return json.loads(prepared.read_text())["classes"]
    raw = settings.path(settings.data.raw)
    return sorted(p.name for p in raw.iterdir() if p.is_dir() and not p.name.startswith(".")) if raw.is_dir() else []


def existing_copies(raw: Path) -> dict[str, list[tuple[str, str]]]:
    """sha256 -> every (label, path) of a regular file with that content under a class folder of data/raw."""
    copies: dict[str, list[tuple[str, str]]] = {}
    for entry in list_entries(raw) if raw.is_dir() else []:
        parts = entry.rel.split("/")
        if entry.problem is None and entry.target and len(parts) > 1:
            copies.setdefault(sha256_of(Path(entry.target).read_bytes()), []).append((parts[0], entry.rel))
    return copies


def existing_labels(raw: Path) -> dict[str, tuple[str, str]]:
    """sha256 -> (label, path) of every regular file already under a class folder of data/raw."""
    return {sha: found[0] for sha, found in existing_copies(raw).items()}


def check_rows(rows: list[LabelRow], classes: list[str], known: dict, *, skip_unlabelled: bool) -> list[dict]:
    """Every problem of the batch (empty when it can be imported); fills in each row's sha256."""
    from .images import ImageRejected, decode_image

    problems, seen = [], {}
    for row in rows:
        if not row.label:
            if not skip_unlabelled:
                problems.append({"row": row.where, "problem": "no label yet (label it, or pass --skip-unlabelled)"})
            continue
        if row.label not in classes:
            close = difflib.get_close_matches(row.label, classes, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"classes: {', '.join(classes)}"
            problems.append({"row": row.where, "problem": f"unknown label {row.label!r} ({hint})"})
        if row.image is None or not row.image.is_file():
            problems.append({"row": row.where, "problem": f"image not found: {row.image or row.sha256 or '?'}"})
            continue
        data = row.image.read_bytes()
        row.sha256 = sha256_of(data)
        try:
            row.meta["format"] = decode_image(data).format
        except ImageRejected as e:
            problems.append({"row": row.where, "problem": f"not an acceptable image: {e.detail}"})
        other = seen.setdefault(row.sha256, row)
        if other.label != row.label:
            problems.append(
                {"row": row.where, "problem": f"the same image is labelled {other.label!r} at {other.where}"}
            )
        if row.sha256 in known and known[row.sha256][0] != row.label:
            label, path = known[row.sha256]
            given = row.meta.get("given_label")
            if given == label:
                continue  # a relabel, asked for against the label the image still has
            why = f"it was {given!r} when the batch was made" if given else "to relabel, name that label in given_label"
            problems.append({"row": row.where, "problem": f"already in data/raw as {label!r} ({path}); {why}"})
    return problems


def import_labels(
    settings: Settings, source: Path, *, labelled_by: str | None = None, skip_unlabelled: bool = False
) -> ImportResult:
    """Check the whole batch, then add its images and their provenance to data/raw; see the module docstring."""
    from lensops.core.registry import now, who

    kind, rows, batch_meta = read_rows(source, settings)
    raw = settings.path(settings.data.raw)
    copies = existing_copies(raw)
    known = {sha: found[0] for sha, found in copies.items()}
    problems = check_rows(rows, class_list(settings), known, skip_unlabelled=skip_unlabelled)
    if problems:
        raise LabelImportRefused(f"{len(problems)} problems in {source}; nothing was imported", problems)
    labelled = [r for r in rows if r.label]
    batch = str(batch_meta.get("batch") or f"import-{now().replace(':', '').replace('-', '')}")
    unique = {r.sha256: r for r in labelled}
    new = [r for sha, r in unique.items() if sha not in known]
    relabels = [r for sha, r in unique.items() if sha in known and known[sha][0] != r.label]
    stamp, actor = now(), labelled_by or batch_meta.get("labelled_by") or who()
    records = [_record(r, batch, stamp, actor, kind) for r in new]
    moves = relabel_moves(raw, relabels, copies)
    sources = provenance.read(raw, settings.label.provenance_dir).set_index("path")["source"].to_dict()
    moved = [
        {**_record(r, batch, stamp, actor, kind), "path": target, "relabelled_from": label, "previous_path": path,
         "source": sources.get(path, provenance.ORIGINAL)}
        for r in relabels
        for label, path, target in moves[r.sha256]
    ]  # fmt: skip
    everything = [*records, *moved]
    written = provenance.write_batch(raw, batch, everything, settings.label.provenance_dir) if everything else None
    for row, record in zip(new, records, strict=True):
        _place(row.image, raw / record["path"])
    for record in moved:
        _move(raw / record["previous_path"], raw / record["path"])
    present = len(unique) - len(new) - len(relabels)
    return ImportResult(batch, records, present, len(rows) - len(labelled), written, kind, moved)


def relabel_moves(raw: Path, rows: list[LabelRow], copies: dict) -> dict[str, list[tuple[str, str, str]]]:
    """sha256 -> (old label, old path, new path) of every copy a relabel moves; the file name is kept
    unless another file of that name is in the new class folder."""
    moves = {}
    for row in rows:
        moves[row.sha256] = []
        for label, path in copies[row.sha256]:
            if label == row.label:
                continue  # a copy that already has the new label stays where it is
            target = f"{row.label}/{Path(path).name}"
            if (raw / target).exists():
                target = f"{row.label}/{row.sha256[:20]}{Path(path).suffix.lower()}"
            moves[row.sha256].append((label, path, target))
    return moves


def _move(source: Path, target: Path) -> None:
    """A relabel: the file moves to its new class folder by one rename (whole or not at all)."""
    if not source.is_file():
        return  # moved by an earlier, interrupted import of this batch
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)


def _record(row: LabelRow, batch: str, stamp: str, actor: str, kind: str) -> dict[str, Any]:
    extension = EXTENSIONS.get(row.meta.get("format", ""), row.image.suffix.lower() or ".img")
    record = {
        "path": f"{row.label}/{row.sha256[:20]}{extension}",
        "sha256": row.sha256,
        "label": row.label,
        "source": row.meta.get("source", provenance.PRODUCTION if kind != "folder" else "import"),
        "batch": batch,
        "imported_at": stamp,
        "labelled_by": row.meta.get("labelled_by") or actor,
        "origin": kind,
    }
    for key in ("first_seen", "requests", "request_ids", "model_version", "predicted", "score", "capture_reason"):
        if row.meta.get(key) not in (None, ""):
            record[key] = row.meta[key]
    return record


def _place(image: Path, target: Path) -> None:
    """Copy an image into data/raw: whole or not at all (temporary name, fsync, rename)."""
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(image, temporary)
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, target)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class Versioned:
    ok: bool
    message: str
    data_hash: str | None = None


def version_data(settings: Settings) -> Versioned:
    """Validate data/raw, then `dvc add` it: the next `dvc repro` trains on the new version.

    Committing the new `.dvc` file stays the user's (or the pipeline's) decision: this never commits.
    """
    import subprocess
    import sys

    import yaml

    from .validation import validate_dataset

    report = validate_dataset(settings, progress=False)
    if not report.ok:
        failed = ", ".join(e.name for e in report.expectations if not e.success)
        return Versioned(False, f"data/raw does not validate after the import ({failed}); see `lensops data validate`")
    raw, root = settings.path(settings.data.raw), settings.root
    if not (root / ".dvc").is_dir():
        return Versioned(True, f"valid; {root} is not a DVC repository, so {raw} was not versioned (`dvc add` it)")
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc) if dvc.exists() else "dvc", "add", "--quiet", str(raw.relative_to(root))]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        return Versioned(False, f"`{' '.join(command[1:])}` failed: {done.stderr.strip()[-500:]}")
    dvc_file = raw.with_name(raw.name + ".dvc")
    data_hash = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    message = (
        f"valid; {raw.name} is now data version {data_hash} ({dvc_file.relative_to(root)}). Committing it is yours "
        f"to decide: `git add {dvc_file.relative_to(root)} && git commit`, then `dvc push` to share the images"
    )
    return Versioned(True, message, data_hash)
