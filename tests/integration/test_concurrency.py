"""Everything at once against one store: serving's alias polling, promotion, drift, a retraining and a tune sweep.

Each job is its own process (`tests/concurrency.py`), doing to the registry what the real job
does, all at once for a few seconds; the embedded SQLite store and the team stack's MLflow server
on PostgreSQL run the same test. Afterwards: no job saw an error (no "database is locked"), every
run, tag and version a job wrote is there, and no read ever showed champion and previous on one
version, or no champion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

ROLES = ("poll", "promote", "drift", "retrain", "tune")
SECONDS = 6


def _seed(uri: str, model: str) -> None:
    """Three versions, v1 the champion: what a project has after a few promotions."""
    from lensops.core.registry import Registry

    registry = Registry(uri, model)
    client = registry.client()
    client.create_registered_model(model)
    experiment = registry.experiment_id(model)
    for _ in range(3):
        run = client.create_run(experiment).info.run_id
        client.create_model_version(model, client.get_run(run).info.artifact_uri + "/model", run_id=run)
    client.set_registered_model_alias(model, "champion", "1")


def _run_all(uri: str, model: str, out: Path, env: dict) -> dict[str, dict]:
    command = [sys.executable, "-m", "tests.concurrency"]
    jobs = {
        role: subprocess.Popen([*command, role, uri, model, str(SECONDS), str(out / f"{role}.json")], cwd=REPO, env=env)
        for role in ROLES
    }
    for role, job in jobs.items():
        assert job.wait(timeout=300) == 0, f"{role} exited with {job.returncode}"
    return {role: json.loads((out / f"{role}.json").read_text()) for role in ROLES}


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_everything_at_once_on_one_store(store, tmp_path, request):
    import os

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if store == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        stack_env = request.getfixturevalue("team_stack").state()["env"]
        env.update(stack_env)
        uri = stack_env["MLFLOW_TRACKING_URI"]
    model = f"race-{store}"
    _seed(uri, model)
    reports = _run_all(uri, model, tmp_path, env)

    for role, report in reports.items():
        assert report["errors"] == [], f"{role}: {report['errors'][:3]}"
        assert report["done"] > 0, role
    assert reports["poll"]["violations"] == []
    assert reports["promote"]["done"] >= 3 and reports["poll"]["done"] >= 20  # reads overlapped moves

    from lensops.core.registry import Registry

    client = Registry(uri, model).client()
    for role in ("drift", "retrain", "tune"):
        for run in reports[role]["runs"]:
            assert client.get_run(run).info.status == "FINISHED", (role, run)
    for version, key, value in reports["drift"]["tags"] + reports["retrain"]["tags"]:
        assert client.get_model_version(model, version).tags.get(key) == value, (version, key)
    versions = {str(v.version) for v in client.search_model_versions(f"name='{model}'")}
    assert set(reports["retrain"]["versions"]) <= versions
    aliases = client.get_registered_model(model).aliases
    assert aliases["champion"] != aliases.get("previous") and "previous" in aliases
    if store == "sqlite":  # readers beside a writer: the file was put in WAL mode when lensops first opened it
        import sqlite3

        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
