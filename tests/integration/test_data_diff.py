"""`lensops data diff` on a real DVC-versioned folder in a throw-away git repository."""

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.imagefactory import write_class_folders
from tests.integration.test_dvc_pipeline import sh

pytestmark = pytest.mark.slow


@pytest.fixture
def versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """v1 committed (ant 4, bee 4); the working tree's data/raw.dvc is v2 (added, removed, relabelled)."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    raw = root / "data" / "raw"
    write_class_folders(raw, {"ant": 4, "bee": 4})
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "ci@lensops.invalid")
    sh(root, "git", "config", "user.name", "lensops tests")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "add", "-q", "data/raw")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-q", "-m", "v1")
    (raw / "ant" / "img_0001.png").rename(raw / "bee" / "was_ant.png")  # relabelled
    (raw / "bee" / "img_0000.png").unlink()  # removed
    write_class_folders(raw, {"cat": 3}, seed=7)  # added
    (raw / "provenance.jsonl").write_text(
        "\n".join(json.dumps({"path": f"cat/img_000{i}.png", "batch": "b-17", "labeller": "ana"}) for i in range(3))
    )
    sh(root, "dvc", "add", "-q", "data/raw")
    monkeypatch.chdir(root)
    return root


def test_diff_lists_added_removed_and_relabelled_per_class(versions, cli):
    result = cli("data", "diff", "--json")
    assert result.exit_code == 0, result.output
    diff = json.loads(result.output)
    assert (diff["rev_a"], diff["rev_b"], diff["n_before"], diff["n_after"]) == ("HEAD", "the working tree", 8, 10)
    assert [a["path"] for a in diff["added"]] == ["cat/img_0000.png", "cat/img_0001.png", "cat/img_0002.png"]
    assert all(a["provenance"]["batch"] == "b-17" for a in diff["added"])
    assert [r["path"] for r in diff["removed"]] == ["bee/img_0000.png"]
    (moved,) = diff["relabelled"]
    assert (moved["from"], moved["to"], moved["paths_after"]) == (["ant"], ["bee"], ["bee/was_ant.png"])
    classes = {c["label"]: c for c in diff["classes"]}
    assert (classes["ant"]["before"], classes["ant"]["after"], classes["ant"]["relabelled_out"]) == (4, 3, 1)
    assert (classes["bee"]["removed"], classes["bee"]["relabelled_in"]) == (1, 1)
    assert classes["cat"]["added"] == 3 and classes["cat"]["share_change"] == 0.3

    table = cli("data", "diff").output
    assert "relabelled ant/img_0001.png -> bee/was_ant.png" in table
    assert "provenance: 3 records" in table and "3 of 3 added images named there" in table


def test_diff_between_two_commits_and_clear_usage_errors(versions, cli):
    sh(versions, "git", "add", "-A")
    sh(versions, "git", "commit", "-q", "-m", "v2")
    diff = json.loads(cli("data", "diff", "HEAD~1", "HEAD", "--json").output)
    assert len(diff["added"]) == 3 and len(diff["relabelled"]) == 1
    assert json.loads(cli("data", "diff", "--json").output)["added"] == []  # HEAD against the same working tree

    unknown = cli("data", "diff", "no-such-rev")
    assert unknown.exit_code == 2 and "unknown revision 'no-such-rev'" in unknown.output
    sh(versions, "git", "rm", "-q", "--cached", "data/raw.dvc")
    (versions / "data" / "raw.dvc").unlink()
    missing = cli("data", "diff")
    assert missing.exit_code == 2 and "data/raw.dvc does not exist at the working tree" in missing.output
