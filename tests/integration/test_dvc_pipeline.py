"""`dvc repro` in a throw-away git repository, with real DVC and real images.

The data-stage tests reproduce up to `prepare`; the demo test runs every stage, training shrunk.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.imagefactory import write_class_folders

pytestmark = pytest.mark.slow


def sh(cwd: Path, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if ok and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for code in (REPO / "data").glob("*.py"):  # the stages depend on their code files
        shutil.copy(code, root / "data" / code.name)
    write_class_folders(root / "data" / "raw", {"ant": 12, "bee": 12})
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "ci@lensops.invalid")
    sh(root, "git", "config", "user.name", "lensops tests")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    sh(root, "dvc", "add", "-q", "data/raw")
    return root


def test_repro_runs_validate_then_prepare_and_is_then_up_to_date(repo: Path):
    out = sh(repo, "dvc", "repro", "prepare").stdout
    assert "Running stage 'validate'" in out and "Running stage 'prepare'" in out
    assert (repo / "data" / "prepared" / "manifest.parquet").is_file()
    assert json.loads((repo / "reports" / "data_validation.json").read_text())["ok"] is True
    metrics = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    assert "n_images" in json.dumps(metrics) and "24" in json.dumps(metrics)

    assert "Running stage" not in sh(repo, "dvc", "repro", "prepare").stdout  # nothing changed, nothing reruns

    params = (repo / "params.yaml").read_text().replace("seed: 42", "seed: 7")
    (repo / "params.yaml").write_text(params)
    out = sh(repo, "dvc", "repro", "prepare").stdout
    assert "Running stage 'prepare'" in out and "Running stage 'validate'" not in out


def test_repro_stops_at_invalid_data(repo: Path):
    sh(repo, "dvc", "repro", "prepare")
    before = (repo / "data" / "prepared" / "manifest.parquet").read_bytes()
    (repo / "data" / "raw" / "bee" / "zero.png").write_bytes(b"")
    result = sh(repo, "dvc", "repro", "prepare", ok=False)
    assert result.returncode != 0
    assert "bee/zero.png" in result.stdout + result.stderr
    assert (repo / "data" / "prepared" / "manifest.parquet").read_bytes() == before  # prepare did not run


def test_pushed_data_version_can_be_restored(repo: Path):
    sh(repo, "dvc", "repro", "prepare")
    sh(repo, "dvc", "push", "-q")
    shutil.rmtree(repo / "data" / "raw")
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(repo, "dvc", "pull", "-q")
    assert len(list((repo / "data" / "raw").rglob("*.png"))) == 24
    assert "Running stage" not in sh(repo, "dvc", "repro", "prepare").stdout


def test_demo_runs_the_pipeline_on_the_digits_against_the_team_stack(tmp_path: Path, team_stack, monkeypatch):
    # The same steps `make demo` runs, in a scratch repository laid out like this one, against the
    # team stack (PostgreSQL, object storage, an MLflow server), with only its environment variables
    # set: the whole pipeline runs unchanged. Every stage's test covers the embedded SQLite store.
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    for code in (REPO / "data").glob("*.py"):
        shutil.copy(code, root / "data" / code.name)
    for package in ("training", "lensops"):  # whole packages: Ray workers import from this folder too
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    # Training shrunk to seconds, fed by a DataLoader per worker (Ray Data's start-up is most of
    # a short run; test_training covers that path); `make demo` itself runs the full 15 epochs.
    # Four epochs of small batches: enough for the retrained model to learn the shifted digits, which
    # the test asserts (two epochs of 64 left both models answering one class on them).
    params = (root / "params.yaml").read_text().replace("epochs: 15", "epochs: 4").replace("size: 32", "size: 16")
    params = params.replace("batch_size: 64 ", "batch_size: 16 ")
    params = params.replace("input: auto", "input: dataloader")  # what auto picks on one node; said, not assumed
    params = params.replace("folds: 5", "folds: 2").replace("epochs: 6   ", "epochs: 1   ")  # the audit, shrunk too
    params = params.replace("report_sample: 500", "report_sample: 100")  # the HTML's t-SNE; verdicts use every record
    for gate in (
        "min_accuracy: 0.9",
        "max_accuracy_drop: 0.01",
        "max_class_recall_drop: 0.05",
        "max_latency_ratio: 1.5",
        "max_slice_drop: 0.05",
        "max_robustness_drop: 0.1",
    ):
        params = params.replace(gate, gate.split(":")[0] + ": null")  # two epochs are not meant to be good
    (root / "params.yaml").write_text(params)
    sh(root, "git", "init", "-q")
    stack_env = team_stack.state()["env"]
    for key, value in stack_env.items():  # what `lensops stack up` tells a user to export
        monkeypatch.setenv(key, value)
    sh(root, sys.executable, "-m", "lensops.closed_loop")

    summary = json.loads((root / "reports" / "demo_summary.json").read_text())
    assert summary["ok"] and all(step["ok"] for step in summary["steps"])
    assert 0 <= summary["first_model"]["accuracy"] <= 1 and (root / "metrics" / "eval.json").is_file()
    assert not (root / "mlruns").exists()  # runs and versions went to the stack, none to a local store
    served = summary["served"]
    assert served["exit_code"] == 0 and len(served["answers"]) == 10  # one image per digit, stopped with SIGINT
    assert {a["version"] for a in served["answers"]} == {"1"}

    # The production data loop: no drift on clean traffic, drift on shifted; the captured images are
    # exported, labelled, imported as a new data version; retrained, reviewed by slice, promoted.
    assert summary["drift_clean"]["drift"] is False and summary["drift_clean"]["model_version"] == "1"
    assert summary["drift_shifted"]["drift"] is True and summary["drift_shifted"]["score"] > 0.5
    explained = summary["drift_shifted"]["breakdown"]  # which classes and clusters moved, with their images
    assert explained["clusters"] and explained["grids"] and all(Path(g).is_file() for g in explained["grids"])
    assert summary["drift_clean"]["breakdown"]["clusters"] == {}
    traced = summary["trace"]  # one wrong answer on shifted traffic, traced back to v1 and its training images
    assert traced["sent"]["label"] != traced["sent"]["predicted"] == traced["request"]["label"]
    assert traced["version"]["version"] == "1" and traced["request"]["request_id"] == traced["sent"]["request_id"]
    assert len(traced["neighbours"]) == 8 and Path(traced["grid"]).stat().st_size > 0
    card = Path(summary["card"]["markdown"]).read_text()  # the champion's card: v2, reviewed, judged in production
    assert card.startswith('---\nmodel_name: "digits"\nversion: "2"') and "Verdict **promote** against v1" in card
    assert card.count("| no_drift |") >= 1 and card.count("| drift |") >= 1  # after retraining, then inverted digits
    assert summary["retrained"] is True and summary["promoted_version"] == "2"
    assert summary["reviewed_version"] == "2" and summary["review_verdict"] == "promote"
    assert set(summary["slices"]["challenger"]) == {"source=original", "source=production"}
    traffic = summary["traffic"]
    assert traffic["shifted:shifted_holdout"]["versions"] == ["1"]
    assert traffic["after:shifted_holdout"]["versions"] == ["2"]
    assert summary["accuracy_on_shifted_after"] > summary["accuracy_on_shifted_before"]
    assert summary["drift_after"]["model_version"] == "2" and summary["drift_after"]["drift"] is False
    assert summary["drift_uncovered"]["drift"] is True and summary["drift_uncovered"]["model_version"] == "2"
    models = {m["version"]: m for m in json.loads(sh(root, "lensops", "models", "--json").stdout)}
    assert "champion" in models[2]["aliases"].split(",") and "previous" in models[1]["aliases"].split(",")
    n_images = json.loads((root / "metrics" / "data.json").read_text())["n_images"]
    assert summary["images_exported"] == summary["images_imported"] > 100
    assert summary["images_captured"] >= summary["images_exported"] and summary["data_version"].endswith(".dir")
    assert n_images == 1797 + summary["images_imported"]
    # The data checks: near-duplicate groups from validation, and the audit's ranked suspects.
    assert summary["near_duplicates"]["images"] >= 2 * summary["near_duplicates"]["groups"]
    audit = summary["audit"]
    assert audit["n_images"] == 1797 and audit["folds"] == 2 and 0 < audit["top"] <= 40
    assert set(audit["issues"]) == {"label", "outlier", "near_duplicate"}
    assert len(pd.read_csv(root / "reports" / "audit" / "audit.csv")) == 1797
    assert (root / "reports" / "audit" / "suspects.png").stat().st_size > 0

    # MLflow links the trigger: drift run -> retrain run -> training run -> version 2.
    import mlflow

    retrain = summary["retrain"]
    client = mlflow.MlflowClient(stack_env["MLFLOW_TRACKING_URI"])
    retrain_run = client.get_run(retrain["run_id"])
    assert retrain_run.data.tags["lensops.link.drift_run"] == summary["drift_shifted"]["run_id"]
    assert retrain_run.data.tags["lensops.link.training_run"] == retrain["training_run_id"]
    assert client.get_run(summary["drift_shifted"]["run_id"]).data.tags["lensops.link.retrain_run"] == retrain["run_id"]
    assert client.get_run(retrain["training_run_id"]).data.tags["lensops.link.retrain_run"] == retrain["run_id"]
    assert client.get_model_version("digits", "2").tags["lensops.link.retrain_run"] == retrain["run_id"]

    # SIGTERM stops `lensops serve` cleanly too, and no production-log record is lost on the way.
    from lensops.client import serve_check
    from lensops.core.production_log import read_log

    logged = len(read_log(root / "reports" / "production_log"))
    assert logged == 10 + sum(t["requests"] for t in traffic.values())
    again = serve_check(root, stop_signal=signal.SIGTERM)
    assert again["exit_code"] == 0 and len(again["answers"]) == 10
    assert {a["version"] for a in again["answers"]} == {"2"}
    assert len(read_log(root / "reports" / "production_log")) == logged + 10
    plots = json.loads(sh(root, "dvc", "plots", "show", "--json").stdout)["data"]
    assert {"loss", "accuracy", "metrics/confusion.csv", "reports/train/learning_curves.png"} <= set(plots)
    assert (root / "data" / "raw.dvc").is_file()
    assert not (root / ".dvc-storage").exists()  # DVC pushed to the stack's object store, beside MLflow's artifacts
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")  # the endpoint and keys come from the stack's environment
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="lensops")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert sum(k.startswith("dvc/files/md5/") for k in keys) > 1797  # every digit, and the imported images
    assert sum(k.startswith("mlflow/") and k.endswith("model.pt2") for k in keys) >= 2  # both versions' networks
    assert "Running stage" not in sh(root, "dvc", "repro").stdout
