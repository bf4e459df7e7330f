"""`lensops data audit` on real image files: flipped digits are found, and the fix imports as a relabel."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import REPO

# All ten digits at 16 px, 3 epochs per fold: the audit takes about a minute on 2 cores.
AUDIT_FAST = ["train.preprocessing.size=16", "audit.epochs=3", "audit.folds=5", "audit.top=40"]


def invoke(*args: str):
    from lensops.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def flipped_digits(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """A prepared project of the ten demo digits at 16 px, 20 of them moved to a wrong class folder."""
    from data.digits import flip_labels, write_digits
    from data.prepare import prepare_dataset
    from lensops.core.settings import load_settings

    root = tmp_path_factory.mktemp("audit_project")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_digits(root / "data" / "raw", size=16)
    flipped = flip_labels(root / "data" / "raw", 20, seed=0)
    prepare_dataset(load_settings(root / "params.yaml", AUDIT_FAST), progress=False)
    return root, flipped


@pytest.fixture(scope="module")
def audited(flipped_digits, ray_session):
    root, flipped = flipped_digits
    options = [a for o in AUDIT_FAST for a in ("-S", o)]
    result = invoke("--params", root / "params.yaml", "data", "audit", *options)
    assert result.exit_code == 0, result.output
    return root, flipped, result.output


@pytest.mark.slow
def test_the_audit_ranks_flipped_labels_among_its_top_suspects(audited):
    root, flipped, output = audited
    table = pd.read_csv(root / "reports" / "audit" / "audit.csv", keep_default_na=False, dtype={"given_label": str})
    top = table.head(40)
    found = set(top["path"]) & set(flipped)
    assert len(found) >= 16, f"only {len(found)} of 20 flipped images in the top 40: {sorted(set(flipped) - found)}"
    for path in found:  # the given label is the wrong one, and the model saw through it
        row = top[top["path"] == path].iloc[0]
        assert row["given_label"] == flipped[path][1]
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert set(table.columns) >= {"path", "given_label", "predicted_label", "label_score", "issue", "rank"}
    assert "top 40 suspects" in output and "lensops label import" in output


@pytest.mark.slow
def test_the_audit_writes_its_summary_grid_and_a_labelling_batch(audited):
    root, _, _ = audited
    folder = root / "reports" / "audit"
    summary = json.loads((folder / "audit.json").read_text())
    assert summary["n_images"] == 1797 and summary["folds"] == 5 and summary["epochs"] == 3
    assert set(summary["issues"]) == {"label", "outlier", "near_duplicate"}
    assert summary["issues"]["label"] >= 10
    assert summary["out_of_sample_accuracy"] > 0.9 and summary["seconds"] > 0
    assert (folder / "suspects.png").stat().st_size > 10_000
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert all(r["label"] == r["given_label"] and (folder / r["file"]).is_file() for r in rows)


@pytest.mark.slow
def test_fixed_labels_import_as_relabels_with_provenance(audited, tmp_path):
    """Confirmed rows change nothing; corrected rows move their image to the right class folder."""
    from data import provenance

    source, flipped, _ = audited
    root = tmp_path / "project"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("mlruns", "ray_results"))
    labels = root / "reports" / "audit" / "labels.csv"
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    fixed = {r["path"]: flipped[r["path"]][0] for r in rows if r["path"] in flipped}
    for r in rows:
        r["label"] = fixed.get(r["path"], r["label"])
    _write(labels, rows)

    result = invoke("--params", root / "params.yaml", "label", "import", labels, "--no-version")
    assert result.exit_code == 0, result.output
    raw = root / "data" / "raw"
    for path, true_label in fixed.items():
        assert not (raw / path).exists() and (raw / true_label / Path(path).name).is_file()
    records = provenance.read(raw)
    moved = records[records["relabelled_from"].notna()]
    assert len(moved) == len(fixed) and set(moved["previous_path"]) == set(fixed)
    assert set(moved["source"]) == {"original"}
    assert f"relabelled {len(fixed)}" in result.output

    again = invoke("--params", root / "params.yaml", "label", "import", labels, "--no-version")
    assert again.exit_code == 0 and "relabelled 0" in again.output  # idempotent: nothing left to move


@pytest.mark.slow
def test_a_relabel_against_a_changed_label_is_refused(audited, tmp_path):
    source, _, _ = audited
    root = tmp_path / "project"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("mlruns", "ray_results"))
    labels = root / "reports" / "audit" / "labels.csv"
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))[:1]
    rows[0]["given_label"] = next(c for c in "0123456789" if c not in (rows[0]["given_label"], rows[0]["predicted"]))
    rows[0]["label"] = rows[0]["predicted"]
    _write(labels, rows)
    result = invoke("--params", root / "params.yaml", "label", "import", labels, "--no-version")
    assert result.exit_code == 1
    assert "already in data/raw" in result.output and "when the batch was made" in result.output
    assert (root / "data" / "raw" / rows[0]["path"]).is_file()


def test_an_audit_without_prepared_data_names_the_command_to_run(project, cli):
    result = cli("data", "audit")
    assert result.exit_code == 2
    assert "lensops data prepare" in result.output


def _write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
