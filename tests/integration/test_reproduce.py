"""`lensops reproduce` in a throw-away git repository laid out like this one: real git, DVC, Ray and MLflow.

One version is trained (deterministic, shrunk to seconds) from a clean commit whose data version was
pushed to a local DVC remote; the reproduction checks out that commit, pulls that data and trains
again on the commit's own code, in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lensops.core.registry import Registry
from lensops.core.settings import load_settings
from tests.conftest import REPO, TINY_TRAINING, mlflow_client, project_copy

pytestmark = pytest.mark.slow

# Recorded as -S overrides, not in params.yaml: the reproduction must train with what the run used.
# train.input stays `auto` (the default): a DataLoader per worker on one node without a GPU.
TRAINING = [*TINY_TRAINING, "train.deterministic=true", "train.batch_size=8"]


def sh(cwd: Path, *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def versioned(ray_session, digits_project, tmp_path_factory):
    """A committed project, its data version pushed, and version 1 trained from that commit."""
    from data.prepare import prepare_dataset
    from lensops.client import tool
    from training.train import train

    base = tmp_path_factory.mktemp("reproduce")
    root = base / "repo"
    (root / "data").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    for code in [*(REPO / "data").glob("*.py"), REPO / "data" / ".gitignore"]:
        shutil.copy(code, root / "data" / code.name)
    for package in ("training", "lensops"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(digits_project / "data" / "raw", root / "data" / "raw")
    git, dvc = ("git", "-c", "user.email=ci@lensops.invalid", "-c", "user.name=lensops tests"), tool("dvc")
    sh(root, "git", "init", "-q")
    sh(root, dvc, "remote", "add", "--local", "-d", "team", str(base / "remote"))  # this checkout's config only
    sh(root, dvc, "add", "-q", "data/raw")
    sh(root, "git", "add", "-A")
    sh(root, *git, "commit", "-q", "-m", "digits 0, 1, 7")
    sh(root, dvc, "push", "-q")

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    settings = load_settings(root / "params.yaml", TRAINING)
    prepare_dataset(settings, progress=False)
    result = train(settings, progress=False)
    commit = sh(root, "git", "rev-parse", "HEAD").strip()
    return root, settings, result, commit


def test_a_deterministic_version_reproduces_exactly_and_is_registered_when_asked(versioned, cli, tmp_path):
    from training.card import card

    root, settings, trained, commit = versioned
    client = mlflow_client(settings)
    tags = client.get_model_version("tiny", trained.model_version).tags
    assert tags["lensops.git_commit"] == commit  # trained from the clean commit

    result = cli(
        "--params", root / "params.yaml", "reproduce", f"models:/tiny/{trained.model_version}", "--check", "--register"
    )
    assert result.exit_code == 0, result.output
    report = json.loads((root / "reports" / "reproduce" / "tiny-v1" / "reproduction.json").read_text())
    assert report["verdict"] == "reproduced"
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"test accuracy", "class recall", "identical predictions", "same prepared data",
                           "same params", "same code"}  # fmt: skip
    assert all(c["passed"] for c in checks.values()), checks
    assert report["facts"]["identical_weights"] is True and report["facts"]["code"] == "commit"
    assert report["facts"]["commit"] == commit and report["original"]["n_images"] > 0
    assert report["facts"]["reproduced_lineage"]["raw_hash"] == tags["lensops.raw_hash"]
    assert (root / "reports" / "reproduce" / "tiny-v1" / "recall.png").stat().st_size > 0

    run = client.get_run(report["run_id"])  # the reproduction, a child of the original training run
    assert run.data.tags["mlflow.parentRunId"] == trained.run_id and run.data.tags["lensops.stage"] == "reproduce"
    assert (
        run.data.params["train.epochs"] == "2" and run.data.metrics["test_accuracy"] == report["reproduced"]["accuracy"]
    )
    assert {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")} == {0, 1}  # learning curves
    # Asked to register: one new version, without an alias; the reproduction's own training registered
    # into its scratch store only (by default nothing at all is registered here).
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'tiny'")) == ["1", "2"]
    assert report["registered"] == "2" and client.get_registered_model("tiny").aliases == {"challenger": 1}
    again = client.get_model_version("tiny", "2")
    assert again.tags["lensops.reproduce.of"] == "1" and again.tags["lensops.link.training_run"] == run.info.run_id
    with Registry.of(settings).open("models:/tiny/2") as version:  # a whole lensops version: it loads and answers
        assert version.classes == ["0", "1", "7"] and version.network() is not None
    assert client.get_model_version("tiny", "1").tags["lensops.reproduce.verdict"] == "reproduced"
    assert sh(root, "git", "worktree", "list").count("\n") == 1  # the worktree is gone
    assert sh(root, "git", "status", "--porcelain", "--untracked-files=no") == ""
    written = card(settings, "models:/tiny/1", out=tmp_path / "card")  # the card tells the last reproduction
    assert "Last reproduction: **reproduced**" in written.md.read_text() and run.info.run_id in written.md.read_text()


def test_a_data_version_missing_from_the_remote_is_named(versioned, cli, tmp_path):
    root, _, trained, _ = versioned
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    result = cli(
        "--params", root / "params.yaml", "reproduce", f"models:/tiny/{trained.model_version}", "--remote", str(empty)
    )
    assert result.exit_code == 2
    raw_hash = mlflow_client(versioned[1]).get_model_version("tiny", "1").tags["lensops.raw_hash"]
    assert raw_hash in result.output and str(empty) in result.output and "dvc push" in result.output
    assert sh(root, "git", "worktree", "list").count("\n") == 1


@pytest.mark.parametrize(
    "commit, message",
    [("0" * 40, "is not in the git repository"), ("{commit}-dirty", "uncommitted changes")],
    ids=["unknown-commit", "dirty-tree"],
)
def test_a_version_whose_code_cannot_be_checked_out_is_refused(versioned, cli, commit, message):
    root, settings, trained, head = versioned
    client = mlflow_client(settings)
    for key in ("lensops.git_commit",):  # on the version and on its run: the run's tag is what is read
        client.set_model_version_tag("tiny", trained.model_version, key, commit.format(commit=head))
        client.set_tag(trained.run_id, key, commit.format(commit=head))
    try:
        result = cli("--params", root / "params.yaml", "reproduce", f"models:/tiny/{trained.model_version}")
        assert result.exit_code == 2 and message in result.output
        assert "--allow-dirty" in result.output or "dirty" not in commit
    finally:
        client.set_model_version_tag("tiny", trained.model_version, "lensops.git_commit", head)
        client.set_tag(trained.run_id, "lensops.git_commit", head)


def final_weights(settings, run_id: str) -> dict[str, torch.Tensor]:
    """The weights of a run's last checkpoint, as the worker saved them."""
    files = settings.path("ray_results").glob(f"{run_id}/checkpoint_*/state.pt")
    states = [torch.load(file, weights_only=True) for file in files]
    return max(states, key=lambda state: state["epoch"])["model"]


def test_deterministic_runs_give_identical_weights_on_either_input_path(versioned, digits_project, tmp_path):
    """The version above read through a DataLoader per worker (what `auto` picks here); with train.deterministic
    the Ray Data path gives the very same weights from the same prepared data, so both depend on the seed alone."""
    from training.train import train

    _, settings, trained, _ = versioned
    run = mlflow_client(settings).get_run(trained.run_id)
    assert run.data.params["train.deterministic"] == "True" and run.data.tags["lensops.train.input"] == "dataloader"
    root = project_copy(digits_project, tmp_path / "ray_data")
    other = load_settings(root / "params.yaml", [*TRAINING, "train.input=ray_data"])
    result = train(other, progress=False)
    assert mlflow_client(other).get_run(result.run_id).data.tags["lensops.train.input"] == "ray_data"
    assert result.run_id != trained.run_id and list(result.history.epoch) == [0, 1]
    first, second = final_weights(settings, trained.run_id), final_weights(other, result.run_id)
    assert first.keys() == second.keys()
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
