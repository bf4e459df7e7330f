"""A label import that relabels images already in data/raw: only when asked against their current label."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from lensops.core.capture import sha256_of


def _batch(folder: Path, raw: Path, rows: list[tuple[str, str, str | None]]) -> Path:
    """labels.csv for (path in raw, new label, given_label or None), with copies of the images."""
    (folder / "images").mkdir(parents=True)
    records = []
    for path, label, given in rows:
        file = f"images/{path.replace('/', '_')}"
        shutil.copy(raw / path, folder / file)
        records.append({"sha256": sha256_of((raw / path).read_bytes()), "file": file, "given_label": given or "",
                        "label": label})  # fmt: skip
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sha256", "file", "given_label", "label"])
        writer.writeheader()
        writer.writerows(records)
    return folder / "labels.csv"


def _first(raw: Path, label: str) -> str:
    return sorted(p.relative_to(raw).as_posix() for p in (raw / label).iterdir())[0]


def test_a_relabel_moves_the_image_and_records_where_it_was(good_raw, tmp_path):
    from data import provenance
    from data.labels import import_labels
    from lensops.core.settings import load_settings

    moved, kept = _first(good_raw, "ant"), _first(good_raw, "bee")
    labels = _batch(tmp_path / "batch", good_raw, [(moved, "cat", "ant"), (kept, "bee", "bee")])
    sha = sha256_of((good_raw / moved).read_bytes())
    result = import_labels(load_settings(), labels)
    assert not (good_raw / moved).exists()
    assert (good_raw / kept).is_file() and result.already_present == 1 and result.imported == []
    (record,) = result.relabelled
    assert record["relabelled_from"] == "ant" and record["previous_path"] == moved
    # cat/ has its own img_0000.png: the moved image takes its content-addressed name instead
    assert record["path"] == f"cat/{sha[:20]}.png" and sha256_of((good_raw / record["path"]).read_bytes()) == sha
    assert record["source"] == provenance.ORIGINAL
    assert provenance.read(good_raw).set_index("path").loc[record["path"], "relabelled_from"] == "ant"

    again = import_labels(load_settings(), labels)  # the same batch twice: nothing left to move
    assert again.relabelled == [] and again.already_present == 2


@pytest.mark.parametrize("given", [None, "bee"])
def test_a_relabel_not_asked_against_the_current_label_is_refused(good_raw, tmp_path, given):
    from data.labels import LabelImportRefused, import_labels
    from lensops.core.settings import load_settings

    path = _first(good_raw, "ant")
    labels = _batch(tmp_path / "batch", good_raw, [(path, "cat", given)])
    with pytest.raises(LabelImportRefused) as refused:
        import_labels(load_settings(), labels)
    (problem,) = refused.value.problems
    assert "already in data/raw as 'ant'" in problem["problem"]
    assert ("given_label" if given is None else "it was 'bee' when the batch was made") in problem["problem"]
    assert (good_raw / path).is_file()
