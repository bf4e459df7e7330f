"""`lensops stack up|status|down`: real PostgreSQL, a real object store and a real `mlflow server`."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from lensops.client import tool

pytestmark = pytest.mark.slow


def lensops(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("lensops"), *args], capture_output=True, text=True, env=env, timeout=300)


def exports(stdout: str) -> dict[str, str]:
    """`export KEY=VALUE` lines, as a shell evaluating `lensops stack up` would read them."""
    return dict(line.removeprefix("export ").split("=", 1) for line in stdout.splitlines() if line.startswith("export"))


def logs_of(folder: Path) -> str:
    """The last lines of each service's log, for a failure message."""
    tails = ("\n".join(log.read_text().splitlines()[-15:]) for log in folder.glob("*.log"))
    return "".join(f"\n---\n{tail}" for tail in tails)


def test_up_status_down_and_up_again_keeps_runs_and_artifacts(tmp_path):
    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="lensops-stack-"))  # PostgreSQL's own user cannot enter pytest's folder
    try:
        up = lensops("stack", "up", "--dir", str(folder))
        assert up.returncode == 0, up.stderr
        env = exports(up.stdout)
        assert set(env) >= {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "LENSOPS_DVC_REMOTE", "AWS_SECRET_ACCESS_KEY"}
        assert exports((folder / "stack.env").read_text()) == env and (folder / "stack.env").stat().st_mode & 0o077 == 0
        for url in (env["MLFLOW_TRACKING_URI"], env["AWS_ENDPOINT_URL"]):
            assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(env["MLFLOW_TRACKING_URI"] + "/health", timeout=10) as answer:
            assert answer.status == 200

        status = lensops("stack", "status", "--dir", str(folder), "--json")
        assert status.returncode == 0, status.stdout + logs_of(folder)  # which service stopped, and why
        services = json.loads(status.stdout)["services"]
        assert set(services) == {"postgres", "objectstore", "mlflow"} and all(s["running"] for s in services.values())
        assert lensops("stack", "up", "--dir", str(folder)).returncode == 0  # running already: nothing new started
        assert {n: s["pid"] for n, s in json.loads(lensops("stack", "status", "--dir", str(folder), "--json").stdout)[
            "services"].items()} == {n: s["pid"] for n, s in services.items()}  # fmt: skip

        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        run = client.create_run(client.create_experiment("stack-test")).info.run_id
        (tmp_path / "note.txt").write_text("kept")
        client.log_artifact(run, str(tmp_path / "note.txt"))  # proxied by the server into the object store

        down = lensops("stack", "down", "--dir", str(folder))
        assert down.returncode == 0, down.stderr
        assert lensops("stack", "status", "--dir", str(folder)).returncode == 1
        for s in services.values():
            assert not _running(s["pid"])

        again = exports(lensops("stack", "up", "--dir", str(folder)).stdout)
        assert again["MLFLOW_TRACKING_URI"] == env["MLFLOW_TRACKING_URI"]  # the same addresses, when free
        client = mlflow.MlflowClient(again["MLFLOW_TRACKING_URI"])
        assert client.get_run(run).info.run_id == run  # PostgreSQL kept the run
        uri = again["MLFLOW_TRACKING_URI"]
        fetched = mlflow.artifacts.download_artifacts(
            run_id=run, artifact_path="note.txt", dst_path=str(tmp_path / "d"), tracking_uri=uri
        )
        assert Path(fetched).read_text() == "kept"  # the object store's copy came back
    finally:
        lensops("stack", "down", "--dir", str(folder))
        shutil.rmtree(folder, ignore_errors=True)


def test_down_stops_only_what_it_started(tmp_path):
    """A recorded pid that now runs another command (a reused pid) is left alone."""
    from lensops.stack import Stack

    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = {"pid": bystander.pid, "url": "http://127.0.0.1:1", "log": "x", "cmdline": ["mlflow", "server"]}
        (tmp_path / "state.json").write_text(json.dumps({"services": {"mlflow": state}, "env": {}}))
        assert Stack(tmp_path, log=lambda line: None).down() == []
        assert bystander.poll() is None  # still running
        assert lensops("stack", "status", "--dir", str(tmp_path)).returncode == 1
    finally:
        bystander.kill()
        bystander.wait()


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
