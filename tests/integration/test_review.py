"""Review, promotion and rollback against a real MLflow store with really trained versions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_TRAINING_FAST_INPUT, Cli, mlflow_client, project_copy

pytestmark = pytest.mark.slow

# Lenient gates for tiny models: v1 and v2 differ only by seed, and two epochs leave seeds up to
# 11 points apart; the workflow is under test here, each gate's arithmetic in tests/unit/test_gates.py.
GATES = [
    "review.gates.min_accuracy=0.6",
    "review.gates.max_accuracy_drop=0.3",
    "review.gates.max_class_recall_drop=0.6",
    "review.gates.max_slice_drop=0.3",
    "review.gates.max_robustness_drop=0.6",
    "review.gates.max_latency_ratio=5",
    "review.latency_repeats=5",
]


@pytest.fixture(scope="module")
def registry_project(ray_session, digits_project, tmp_path_factory):
    """Three versions of `tiny`: v1 and v2 trained well (different seeds), v3 broken on purpose."""
    from lensops.core.settings import load_settings
    from training.train import train

    root = project_copy(digits_project, tmp_path_factory.mktemp("review") / "project")
    for extra in (["train.seed=1"], ["train.seed=2"], ["train.lr=1e-7", "train.epochs=1"]):
        train(load_settings(root / "params.yaml", [*TINY_TRAINING_FAST_INPUT, *extra]), progress=False)
    return root


def lensops(root: Path, *args: str):
    overrides = [a for o in [*TINY_TRAINING_FAST_INPUT, *GATES] for a in ("-S", o)]
    return Cli()("--params", str(root / "params.yaml"), *args, *overrides)


def client(root: Path):
    from lensops.core.settings import load_settings

    return mlflow_client(load_settings(root / "params.yaml", TINY_TRAINING_FAST_INPUT))


def version_tags(root: Path, version: str) -> dict[str, str]:
    return client(root).get_model_version("tiny", version).tags


def aliases(root: Path) -> dict[str, str]:
    return {k: str(v) for k, v in client(root).get_registered_model("tiny").aliases.items()}


def test_review_promote_rollback(registry_project):
    root = registry_project
    # No champion yet: only the absolute gates apply, and a good model passes them.
    result = lensops(root, "review", "--challenger", "1", "--report-dir", str(root / "r1"))
    assert result.exit_code == 0, result.output
    report = json.loads((root / "r1" / "review.json").read_text())
    assert report["verdict"] == "promote" and report["champion"] is None
    assert [g["name"] for g in report["gates"]] == ["min_accuracy"]
    assert report["challenger"]["version"] == "1" and report["challenger"]["accuracy"] >= 0.6
    page = (root / "r1" / "review.html").read_text()
    assert "verdict: <b" in page and f"{report['challenger']['accuracy']:.4f}" in page
    assert page.count("data:image/png;base64,") >= 2  # confusion matrices and reliability, embedded
    assert version_tags(root, "1")["lensops.review.verdict"] == "promote"

    assert lensops(root, "promote", "1").exit_code == 0
    assert aliases(root)["champion"] == "1" and "previous" not in aliases(root)
    tags = version_tags(root, "1")
    assert (
        tags["lensops.champion.set_by"]
        and tags["lensops.champion.set_at"]
        and tags["lensops.champion.review_verdict"] == "promote"
    )

    # v2 against the champion v1: every relative gate is reported with value and threshold.
    result = lensops(root, "review", "--challenger", "2", "--report-dir", str(root / "r2"))
    assert result.exit_code == 0, result.output
    report = json.loads((root / "r2" / "review.json").read_text())
    assert {g["name"] for g in report["gates"]} == {
        "min_accuracy",
        "max_accuracy_drop",
        "max_class_recall_drop",
        "max_latency_ratio",
        "max_slice_drop",
        "max_robustness_drop",
    }
    assert all({"value", "threshold", "passed"} <= set(g) for g in report["gates"])
    assert report["champion"]["version"] == "1"
    assert {"batch1_ms", "batch64_ms_per_image"} == set(report["challenger"]["latency"])
    assert "max_class_recall_drop" in result.output and "verdict" in result.output

    assert lensops(root, "promote", "2", "--reason", "better digits").exit_code == 0
    assert aliases(root)["champion"] == "2" and aliases(root)["previous"] == "1"
    assert version_tags(root, "2")["lensops.champion.reason"] == "better digits"
    assert lensops(root, "promote", "2").exit_code == 0  # promoting the champion again changes nothing

    result = lensops(root, "rollback", "--reason", "incident 42")
    assert result.exit_code == 0, result.output
    assert aliases(root)["champion"] == "1" and aliases(root)["previous"] == "2"
    assert version_tags(root, "1")["lensops.champion.reason"] == "incident 42"

    # v2 was reviewed against v1, which is champion again, so it may be promoted again as is.
    assert lensops(root, "promote", "2").exit_code == 0
    assert aliases(root)["champion"] == "2"

    listing = json.loads(lensops(root, "models", "--json").stdout)
    by_version = {row["version"]: row for row in listing}
    assert set(by_version) == {1, 2, 3}
    assert "champion" in by_version[2]["aliases"] and by_version[1]["review"] == "promote"


def test_broken_challenger_is_held_and_cannot_be_promoted(registry_project):
    root = registry_project
    extra = root / "production_sample"  # a labelled production sample, as --extra takes it
    for label in ("0", "7"):
        (extra / label).mkdir(parents=True, exist_ok=True)
        for png in sorted((root / "data" / "raw" / label).glob("*.png"))[:5]:
            shutil.copy(png, extra / label / png.name)
    args = ["--challenger", "3", "--champion", "1", "--report-dir", str(root / "r3"), "--extra", str(extra)]
    result = lensops(root, "review", *args)
    assert result.exit_code == 3, result.output
    report = json.loads((root / "r3" / "review.json").read_text())
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    assert report["verdict"] == "hold" and "min_accuracy" in failed and "max_accuracy_drop" in failed
    assert "FAIL" in result.output
    assert (
        report["extra"]["n_images"] == 10
        and report["extra"]["champion_accuracy"] > report["extra"]["challenger_accuracy"]
    )
    assert report["disagreements"] > 0 and (root / "r3" / "disagreements.png").stat().st_size > 0
    assert "<h2>disagreements</h2>" in (root / "r3" / "review.html").read_text()
    assert version_tags(root, "3")["lensops.review.failed_gates"].split(",") == failed

    refused = lensops(root, "promote", "3")
    assert refused.exit_code == 1
    assert "refused" in refused.output and "min_accuracy" in refused.output
    no_reason = lensops(root, "promote", "3", "--force")
    assert no_reason.exit_code == 2 and "--force needs --reason" in no_reason.output
    champion = aliases(root)["champion"]
    assert champion != "3"  # nothing moved


def test_unknown_references_are_usage_errors_that_say_what_exists(registry_project):
    root = registry_project
    result = lensops(root, "review", "--challenger", "99")
    assert result.exit_code == 2
    assert re.search(r"has versions 1, 2, 3; aliases: .*@challenger=v3", result.output), result.output
    result = lensops(root, "review", "--champion", "nosuch")
    assert result.exit_code == 2 and "unknown model reference 'nosuch'" in result.output
    assert lensops(root, "promote", "42").exit_code == 2


def test_review_refuses_data_the_challenger_was_not_trained_on(registry_project, tmp_path):
    root = project_copy(registry_project, tmp_path / "other")
    shutil.copytree(registry_project / "mlruns", root / "mlruns")  # same registry, changed data
    classes = root / "data" / "prepared" / "classes.json"
    classes.write_text(classes.read_text() + "\n")  # any change to the prepared folder is another data version
    result = lensops(root, "review", "--challenger", "1", "--champion", "2")
    assert result.exit_code == 2 and "was trained on data" in result.output


def test_robustness_checks_judge_both_versions_on_the_same_perturbed_images(registry_project):
    root = registry_project
    identity = "Rotate(limit=[0, 0], p=0)"  # never applied: the plain test split again
    blackout = "RandomBrightnessContrast(brightness_limit=[-1, -1], contrast_limit=[0, 0], p=1)"  # every pixel 0
    checks = (
        "review.robustness=[{Rotate: {limit: [0, 0], p: 0}}, "
        "{RandomBrightnessContrast: {brightness_limit: [-1, -1], contrast_limit: [0, 0], p: 1}}]"
    )
    out = root / "robust"
    args = ["--challenger", "2", "--champion", "1", "--report-dir", str(out), "--hold-ok"]
    result = lensops(root, "review", *args, "-S", checks)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "review.json").read_text())
    for role in ("challenger", "champion"):
        measured = report[role]["robustness"]
        assert set(measured) == {identity, blackout}
        assert measured[identity]["accuracy"] == report[role]["accuracy"]  # the same pixels as the evaluation
        assert measured[identity]["n"] == report[role]["n_images"]
        # A black image is one input: one answer for every image, so one class recalls all and the others none.
        assert sorted(measured[blackout]["recall"].values()) == [0.0, 0.0, 1.0]
    gate = next(g for g in report["gates"] if g["name"] == "max_robustness_drop")
    drops = {
        name: report["champion"]["robustness"][name]["accuracy"] - report["challenger"]["robustness"][name]["accuracy"]
        for name in (identity, blackout)
    }
    assert gate["value"] == pytest.approx(max(drops.values()))
    page = (out / "review.html").read_text()
    assert "robustness: accuracy under each perturbation" in page and "recall per class" in page

    typo = lensops(root, "review", *args, "-S", "review.robustness=[{Rotat: {limit: 30}}]")
    assert typo.exit_code == 2 and "review.robustness[0]: unknown transform 'Rotat'" in typo.output
