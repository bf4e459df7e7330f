"""The production data loop on a real registry, real files and real DVC: capture, export, label, import.

Production traffic goes through `monitoring.replay`, which answers and logs exactly as serving does
(tests/integration/test_serving.py proves the server writes the same records and captures).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lensops.core.capture import sha256_of
from tests.conftest import TINY_TRAINING_FAST_INPUT, champion_project, project_copy

pytestmark = pytest.mark.slow
LOOP = [*TINY_TRAINING_FAST_INPUT, "drift.min_records=40", "label.batch_size=30"]


@pytest.fixture(scope="module")
def served(ray_session, digits_project, tmp_path_factory):
    """A promoted `tiny` model, and shifted traffic it has answered (all of it captured)."""
    from data.digits import write_traffic
    from monitoring.replay import replay

    overrides = [*LOOP, "monitoring.capture.sample_rate=1.0"]
    settings = champion_project(
        digits_project, tmp_path_factory.mktemp("loop") / "project", overrides, "data loop tests"
    )
    root = settings.root
    prepared = settings.path(settings.data.prepared)
    write_traffic(prepared, root / "traffic" / "shifted", splits=("train", "val"), shift=True, seed=1)
    images = sorted((root / "traffic" / "shifted").glob("*/*.png"))
    answers = replay(settings, images)
    return settings, answers


def truth(settings) -> dict[str, str]:
    """sha256 -> the true label of every traffic image (the scripted labeller's knowledge)."""
    return {sha256_of(p.read_bytes()): p.parent.name for p in (settings.root / "traffic").glob("*/*/*.png")}


def label_csv(labels: Path, answers: dict[str, str], override: dict[int, str] | None = None) -> None:
    """Fill the `label` column as a person would (row i gets `override[i]` when given)."""
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["label"] = (override or {}).get(i, answers[row["sha256"]])
    with open(labels, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_every_answer_is_logged_with_its_sha256_and_captured_images_are_on_disk(served):
    import pandas as pd

    from lensops.core.production_log import read_log

    settings, answers = served
    log = read_log(settings.path(settings.monitoring.log_dir))
    assert len(log) == len(answers) and set(log.sha256) == set(answers.sha256)
    # Replayed records are dated now, in the log's unit (they were once dated 1970).
    age = pd.Timestamp.now(tz="UTC") - pd.to_datetime(log.time, utc=True)
    assert (age > pd.Timedelta(0)).all() and (age < pd.Timedelta(hours=1)).all()
    assert log.captured.all()  # sample_rate 1.0: every image kept
    capture = settings.path(settings.monitoring.capture.dir)
    for row in answers.head(20).itertuples():
        assert (capture / row.sha256[:2] / row.sha256).read_bytes() == Path(row.path).read_bytes()
    assert (answers.novelty > 1).mean() > 0.5  # the shifted digits are far from what the model learnt


def test_export_picks_novel_spread_images_never_in_data_raw(served, tmp_path):
    from monitoring.labelling import export_batch
    from monitoring.replay import replay

    settings, answers = served
    raw = settings.path(settings.data.raw)
    replay(settings, sorted(raw.glob("7/*.png"))[:5])  # images production sent that data/raw already holds
    batch = export_batch(settings, n=30, out=tmp_path / "batches")
    assert batch.folder is not None and len(batch.picked) == 30 and batch.picked.sha256.is_unique
    rows = list(csv.DictReader((batch.folder / "labels.csv").open()))
    assert [r["label"] for r in rows] == [""] * 30 and all((batch.folder / r["file"]).is_file() for r in rows)
    known = {sha256_of(p.read_bytes()) for p in raw.rglob("*.png")}
    assert not known & set(batch.picked.sha256)
    tasks = json.loads((batch.folder / "tasks.json").read_text())
    assert len(tasks) == 30 and tasks[0]["predictions"][0]["result"][0]["value"]["choices"][0] in {"0", "1", "7"}
    assert tasks[0]["data"]["image"].startswith(settings.label.image_url_prefix + "images/")
    assert '<Choice value="7"/>' in (batch.folder / "label_config.xml").read_text()
    # It favours what drives the drift: the picked images are never less often novel than what was captured.
    assert (batch.picked.novelty > 1).mean() >= (answers.novelty > 1).mean()
    assert {truth(settings)[s] for s in batch.picked.sha256} == {"0", "1", "7"}  # spread: every true class is there
    from monitoring.labelling import select

    def spread(picked):  # mean distance between the picked images' (normalised) embeddings
        e = np.stack(picked.embedding.to_numpy())
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return float(np.mean([np.linalg.norm(a - b) for i, a in enumerate(e) for b in e[i + 1 :]]))

    from monitoring.labelling import candidates

    _, pool, _ = candidates(settings, model=None, since=None, last=None)
    assert spread(select(pool, 30, "balanced")) > spread(select(pool, 30, "novel"))
    assert select(pool, 30, "novel").novelty.min() >= pool.novelty.median()  # `novel` takes the most novel
    again = export_batch(settings, n=30, out=tmp_path / "batches")  # an earlier batch's images are not exported again
    assert not set(again.picked.sha256) & set(batch.picked.sha256)


def test_import_adds_labelled_images_with_provenance_and_a_new_data_version(served, tmp_path):
    from data.prepare import prepare_dataset
    from lensops.core.settings import load_settings
    from monitoring.labelling import export_batch

    settings, _ = served
    root = project_copy(settings.root, tmp_path / "project")
    shutil.copytree(settings.root / "mlruns", root / "mlruns")
    shutil.copytree(settings.root / "reports", root / "reports")
    local = load_settings(root / "params.yaml", LOOP)
    for command in (["git", "init", "-q"], [str(Path(sys.executable).parent / "dvc"), "init", "-q"]):
        subprocess.run(command, cwd=root, check=True)
    batch = export_batch(local, n=25)
    label_csv(batch.folder / "labels.csv", truth(settings))
    result = _cli(root, "label", "import", str(batch.folder / "labels.csv"), "--labelled-by", "test-labeller")
    assert result.exit_code == 0, result.output
    assert "data version" in result.output and (root / "data" / "raw.dvc").is_file()
    records = [json.loads(line) for line in next((root / "data" / "raw" / ".provenance").glob("*.jsonl")).open()]
    assert len(records) == 25 and {r["source"] for r in records} == {"production"}
    assert {r["labelled_by"] for r in records} == {"test-labeller"} and all(r["requests"] for r in records)
    for r in records:
        assert sha256_of((root / "data" / "raw" / r["path"]).read_bytes()) == r["sha256"]
    prepared = prepare_dataset(local, progress=False).manifest
    assert (prepared.source == "production").sum() == 25 and set(prepared.source) == {"original", "production"}
    assert _cli(root, "label", "import", str(batch.folder / "labels.csv")).exit_code == 0  # twice: nothing changes
    assert len(list((root / "data" / "raw").rglob("*.png"))) == len(prepared)

    from monitoring.retrain import retrain

    dummy = local.updated({"retrain.command": [sys.executable, "-c", "print('pipeline')"]})
    before = retrain(served[0].updated({"retrain.command": dummy.retrain.command}), reason="unchanged data")
    assert before.outcome == "nothing_new" and before.exit_code == 7 and before.run_id is None
    after = retrain(dummy, reason="labelled production images")
    assert after.changed == ["data"] and after.returncode == 0  # the new data version is what retrains

    from training.review import review
    from training.train import train

    train(local, progress=False)
    judged = review(local, report_dir=tmp_path / "review")  # v2, trained on the new data, against champion v1
    slices = json.loads((tmp_path / "review" / "review.json").read_text())["challenger"]["slices"]
    assert set(slices) == {"source=original", "source=production"} and slices["source=production"]["n"] > 0
    assert "max_slice_drop" in {g.name for g in judged.gates}
    assert "slices: accuracy" in (tmp_path / "review" / "review.html").read_text()


@pytest.mark.parametrize("problem", ["conflict", "unknown label", "missing image", "unlabelled"])
def test_a_batch_with_any_wrong_row_is_refused_whole(served, tmp_path, problem):
    from monitoring.labelling import export_batch

    settings, _ = served
    batch = export_batch(settings, n=12, out=tmp_path)
    labels = batch.folder / "labels.csv"
    answers = truth(settings)
    if problem == "conflict":  # the same image twice, under two labels
        label_csv(labels, answers)
        rows = list(csv.DictReader(labels.open()))
        rows.append({**rows[0], "label": next(c for c in ("0", "1", "7") if c != rows[0]["label"])})
        with open(labels, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif problem == "unknown label":
        label_csv(labels, answers, {3: "77"})
    elif problem == "missing image":
        label_csv(labels, answers)
        next((batch.folder / "images").iterdir()).unlink()
    else:
        label_csv(labels, answers, {5: ""})
    before = sorted(p.relative_to(settings.root) for p in settings.path(settings.data.raw).rglob("*"))
    result = _cli(settings.root, "label", "import", str(labels), *[a for o in LOOP for a in ("-S", o)])
    assert result.exit_code == 1 and "refused" in result.output and "nothing was imported" in result.output
    expected = {"conflict": "the same image is labelled", "unknown label": "did you mean '7'",
                "missing image": "image not found", "unlabelled": "no label yet"}[problem]  # fmt: skip
    assert expected in result.output
    assert sorted(p.relative_to(settings.root) for p in settings.path(settings.data.raw).rglob("*")) == before


def test_label_studio_exports_and_folder_trees_are_read(served, tmp_path):
    from data.label_sources import read_folder_rows, read_label_studio_rows
    from monitoring.labelling import export_batch

    settings, _ = served
    batch = export_batch(settings, n=6, out=tmp_path)
    answers = truth(settings)
    tasks = json.loads((batch.folder / "tasks.json").read_text())
    full = [
        {
            "id": i,
            "data": t["data"],
            "annotations": [
                {"was_cancelled": True, "result": [{"type": "choices", "value": {"choices": ["1"]}}]},
                {
                    "completed_by": {"email": "ann@example.org"},
                    "result": [{"type": "choices", "value": {"choices": [answers[t["data"]["sha256"]]]}}],
                },
            ],
        }
        for i, t in enumerate(tasks)
    ]
    (batch.folder / "export.json").write_text(json.dumps(full))
    rows, meta = read_label_studio_rows(batch.folder / "export.json", settings)
    assert [r.label for r in rows] == [answers[t["data"]["sha256"]] for t in tasks]
    assert all(r.image.is_file() for r in rows) and {r.meta["labelled_by"] for r in rows} == {"ann@example.org"}
    assert meta["batch"] == batch.batch
    minimal = [{"image": "/elsewhere/x.png", "sha256": t["data"]["sha256"], "label": "7"} for t in tasks]
    (tmp_path / "min.json").write_text(json.dumps(minimal))
    rows, _ = read_label_studio_rows(tmp_path / "min.json", settings)  # images found in the capture store by sha256
    assert all(r.image is not None and r.image.is_file() for r in rows) and {r.label for r in rows} == {"7"}
    (tmp_path / "tree" / "7").mkdir(parents=True)
    shutil.copy(rows[0].image, tmp_path / "tree" / "7" / "a.png")
    assert [(r.label, r.image.name) for r in read_folder_rows(tmp_path / "tree")] == [("7", "a.png")]


def _cli(root: Path, *args: str):
    from tests.conftest import Cli

    return Cli()("--params", str(root / "params.yaml"), *args)


def test_prepared_sources_default_to_original(served):
    settings, _ = served
    manifest = pd.read_parquet(settings.path(settings.data.prepared) / "manifest.parquet")
    assert set(manifest.source) == {"original"} and set(manifest.batch) == {""}
