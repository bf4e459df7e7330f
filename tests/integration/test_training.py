"""Training end to end on real Ray, a real MLflow store and real image files, shrunk to seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from lensops.core.settings import load_settings
from tests.conftest import TINY_TRAINING, TINY_TRAINING_FAST_INPUT, mlflow_client, project_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(ray_session, digits_project, tmp_path_factory):
    """One tiny training run that the tests below inspect from every side."""
    from training.train import train

    root = project_copy(digits_project, tmp_path_factory.mktemp("trained") / "project")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # Eight images a step: two epochs are then enough steps for the batch-norm running statistics,
    # which evaluation uses, to catch up with the weights (at sixteen, validation sometimes saw a
    # network that still answered one class).
    # Ray Data named: `auto` picks a DataLoader per worker on one node; this run keeps Ray Data tested.
    settings = load_settings(root / "params.yaml", [*TINY_TRAINING, "train.batch_size=8", "train.input=ray_data"])
    result = train(settings, progress=False)
    return settings, result


def test_training_registers_a_challenger_with_its_files(trained):
    settings, result = trained
    client = mlflow_client(settings)
    version = client.get_model_version_by_alias("tiny", "challenger")
    assert str(version.version) == result.model_version
    assert version.run_id == result.run_id  # the version links back to the run that trained it
    tags = version.tags
    assert tags["lensops.link.training_run"] == result.run_id
    assert len(tags["lensops.git_commit"]) >= 7 and tags["lensops.data_hash"].endswith(".dir")
    assert len(tags["lensops.params_hash"]) == 16
    assert tags["lensops.challenger.reason"] == "newly trained"

    from lensops.core.registry import Registry

    with Registry.of(settings).open("@challenger") as files:
        assert files.version == result.model_version and files.aliases == ["challenger"]
        assert files.run_id == result.run_id and files.lineage["data_hash"] == tags["lensops.data_hash"]
        assert files.classes == ["0", "1", "7"]
        assert files.spec == settings.train.preprocessing
        assert files.metrics["test"]["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
        baseline = files.baseline()
    # The baseline: every validation image, and training images up to train.reference_max (novelty's reference).
    manifest = pd.read_parquet(settings.path("data/prepared/manifest.parquet"))
    assert (baseline.split == "val").sum() == (manifest.split == "val").sum()
    assert 0 < (baseline.split == "train").sum() <= min((manifest.split == "train").sum(), settings.train.reference_max)
    assert {"path", "label", "predicted", "embedding"} <= set(baseline.columns)
    assert len(baseline.embedding.iloc[0]) == 128


def test_the_run_is_tracked(trained):
    settings, result = trained
    client = mlflow_client(settings)
    run = client.get_run(result.run_id)
    assert run.data.params["train.model"] == "smallcnn" and run.data.params["train.epochs"] == "2"
    for key in ("train_loss", "val_accuracy", "lr", "images_per_second", "test_accuracy", "test_macro_f1"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(result.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.source
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    expected = {"confusion_matrix.png", "learning_curves.png", "per_class_metrics.csv", "augmentation_preview.png"}
    assert expected | {"augmentation.json", "test_predictions.csv", "metrics.json", "classes.json"} <= artifacts
    augmentation = json.loads(Path(client.download_artifacts(result.run_id, "augmentation.json")).read_text())
    assert [t["__class_fullname__"] for t in augmentation["transform"]["transforms"]] == [
        "Affine",
        "RandomBrightnessContrast",
    ]


def test_dvc_metrics_and_plots_are_written(trained):
    settings, result = trained
    metrics = json.loads(settings.path("metrics/eval.json").read_text())
    assert metrics["accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    assert set(metrics["recall"]) == {"0", "1", "7"} and 0 <= metrics["macro_f1"] <= 1
    assert set(pd.read_csv(settings.path("metrics/confusion.csv")).columns) == {"actual", "predicted"}
    assert list(pd.read_csv(settings.path("metrics/learning_curves.csv")).epoch) == [0, 1]
    assert settings.path("reports/train/confusion_matrix.png").stat().st_size > 0


def test_tiny_model_learns_something(trained):
    _, result = trained
    # Three well-separated digits: far above the 1/3 of guessing after two epochs.
    assert result.test_metrics["accuracy"] > 0.6


LOAD_SCRIPT = """
import sys
import mlflow, torch
model = mlflow.pytorch.load_model(sys.argv[1])  # MLFLOW_TRACKING_URI names the store
images = torch.load(sys.argv[2], weights_only=True)
logits, embedding = model(images)
torch.save({"logits": logits.detach(), "embedding": embedding.detach()}, sys.argv[3])
assert not {"lensops", "data", "training"} & set(sys.modules), "loaded project code"
"""


def test_registered_model_in_a_fresh_process_reproduces_evaluation(trained, tmp_path):
    """mlflow + torch alone load the version; through the shared transform it gives the evaluation's answers."""
    from data.prepare import load_prepared
    from lensops.core.settings import tracking_uri
    from training.datasets import load_images, split_frame

    settings, result = trained
    manifest, classes, raw = load_prepared(settings.path(settings.data.prepared))
    test = split_frame(manifest, "test")
    torch.save(torch.from_numpy(load_images(test, raw, settings.train.preprocessing)), tmp_path / "images.pt")
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    subprocess.run(
        [
            sys.executable,
            str(script),
            "models:/tiny@challenger",
            str(tmp_path / "images.pt"),
            str(tmp_path / "out.pt"),
        ],
        cwd=tmp_path,
        check=True,
        env={**os.environ, "PYTHONPATH": "", "MLFLOW_TRACKING_URI": tracking_uri(settings.root)},
    )
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    predictions = mlflow_client(settings).download_artifacts(result.run_id, "test_predictions.csv", str(tmp_path))
    evaluated = pd.read_csv(predictions, dtype=str)
    predicted = [classes[i] for i in out["logits"].argmax(1).tolist()]
    assert predicted == evaluated.predicted.tolist()
    assert len(test) > 1 and out["logits"].shape == (len(test), 3)  # another batch size than the example's 2
    assert out["embedding"].shape == (len(test), 128)


def test_trace_leads_from_an_answer_to_its_version_run_commit_and_nearest_training_images(trained, tmp_path, cli):
    """A training image sent as a request: its nearest training image is itself, at distance 0."""
    from monitoring.replay import replay
    from training.trace import trace

    settings, result = trained
    settings = settings.updated(
        {"monitoring.log_dir": str(tmp_path / "log"), "monitoring.capture.dir": str(tmp_path / "capture")}
    )
    manifest = pd.read_parquet(settings.path(settings.data.prepared) / "manifest.parquet")
    sent = manifest[manifest["split"] == "train"].groupby("label").head(1)
    raw = settings.path(settings.data.raw)
    answers = replay(settings, [raw / p for p in sent["path"]], model="@challenger")
    request = answers.iloc[0]

    traced = trace(settings, request["request_id"], k=3, out=tmp_path / "trace")
    version = mlflow_client(settings).get_model_version("tiny", result.model_version)
    assert traced.version["version"] == result.model_version and traced.run["run_id"] == result.run_id
    assert traced.version["git_commit"] == version.tags["lensops.git_commit"] != ""
    assert traced.version["data_hash"] == version.tags["lensops.data_hash"]
    assert traced.request["label"] == request["predicted"] and traced.run["params"]  # the answer, the run's params
    nearest = traced.neighbours[0]
    assert "training split" in traced.neighbours_from and len(traced.neighbours) == 3
    assert nearest["path"] == sent["path"].iloc[0] and nearest["distance"] < 1e-3  # the image itself
    assert nearest["label"] == sent["label"].iloc[0] and nearest["source"] == "original"
    assert [n["distance"] for n in traced.neighbours] == sorted(n["distance"] for n in traced.neighbours)
    assert Path(traced.files["grid"]).stat().st_size > 0 and Path(traced.files["json"]).is_file()

    overrides = ["-S", f"monitoring.log_dir={tmp_path / 'log'}", *[a for o in TINY_TRAINING for a in ("-S", o)]]
    params = ["--params", str(settings.root / "params.yaml")]
    shown = cli(*params, "trace", request["request_id"], "--json", "--out", str(tmp_path / "cli"), *overrides)
    assert shown.exit_code == 0 and json.loads(shown.output)["version"]["version"] == result.model_version
    unknown = cli(*params, "trace", "no-such-request", *overrides)
    assert unknown.exit_code == 2 and "no-such-request" in unknown.output


def test_model_card_has_every_section_and_is_logged_to_the_run(trained, tmp_path, cli):
    from training.card import card

    settings, result = trained
    use = "<script>alert(1)</script> Sorting scanned digits."
    written = card(settings, result.model_version, intended_use=use, out=tmp_path / "card")
    text = written.md.read_text()
    for section in ("What it is for", "Data", "Evaluation", "Review", "Promotion history", "Drift in production",
                    "Lineage", "Reproduce"):  # fmt: skip
        assert f"## {section}" in text
    assert text.startswith('---\nmodel_name: "tiny"') and result.run_id in text
    assert f"lensops reproduce models:/tiny/{result.model_version} --check" in text
    for label, metrics in result.test_metrics["per_class"].items():
        assert f"| {label} | {metrics['precision']:.4f} | {metrics['recall']:.4f} |" in text
    page = written.html.read_text()
    assert "data:image/png;base64," in page and "<script>" not in page and "Sorting scanned digits." in page
    logged = {f.path for f in mlflow_client(settings).list_artifacts(result.run_id, "card")}
    assert logged == {"card/card.md", "card/card.html", "card/per_class.png"}

    shown = cli("--params", str(settings.root / "params.yaml"), "card", "@challenger", "--out", str(tmp_path / "cli"),
                *[a for o in TINY_TRAINING for a in ("-S", o)])  # fmt: skip
    assert shown.exit_code == 0 and (tmp_path / "cli" / "card.html").is_file()


def test_lensops_loader_gives_mlflows_answers(trained, tmp_path, monkeypatch):
    """Every stage loads a version through `ModelVersion.network`; on the CPU it must equal MLflow's own loader."""
    from lensops.core.model_artifact import load_network
    from lensops.core.registry import Registry
    from lensops.core.settings import tracking_uri

    settings, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(settings.root))  # as a user's own script would
    images = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with Registry.of(settings).open("challenger") as version, torch.no_grad():
        expected = mlflow.pytorch.load_model("models:/tiny@challenger")(images)
        ours = version.network()(images)
        moved = version.network(device="cpu")(images)
    for a, b, c in zip(expected, ours, moved, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError):
        load_network(tmp_path / "no-such-model.pt2")


def test_a_worker_failure_resumes_from_the_checkpoint(ray_session, digits_project, tmp_path, monkeypatch):
    from training.train import train

    root = project_copy(digits_project, tmp_path / "project")
    monkeypatch.setenv("LENSOPS_FAIL_ONCE_AT_EPOCH", "1")
    settings = load_settings(root / "params.yaml", [*TINY_TRAINING, "train.epochs=3", "train.max_failures=1"])
    result = train(settings, progress=False)
    markers = list((root / "ray_results").glob("*.failed"))
    assert [m.read_text().strip() for m in markers] == ["failed at epoch 1"]  # it did fail, once
    assert list(result.history.epoch) == [0, 1, 2]  # and finished every epoch exactly once
    steps = [m.step for m in mlflow_client(settings).get_metric_history(result.run_id, "train_loss")]
    assert sorted(set(steps)) == [0, 1, 2]
    assert steps.count(0) == 1  # epoch 0 was not repeated after the restart


def test_a_stopped_run_continues_with_resume(ray_session, digits_project, tmp_path, monkeypatch):
    """A run that dies (no retries left) ends FAILED, names the resume command, and --resume finishes it."""
    from training.train import TrainingError, train

    root = project_copy(digits_project, tmp_path / "project")
    settings = load_settings(
        root / "params.yaml", [*TINY_TRAINING_FAST_INPUT, "train.epochs=3", "train.max_failures=0"]
    )
    monkeypatch.setenv("LENSOPS_FAIL_ONCE_AT_EPOCH", "1")
    with pytest.raises(TrainingError, match="lensops train --resume ") as failure:
        train(settings, progress=False)
    run_id = str(failure.value).rsplit("--resume ", 1)[1].split("`")[0]
    client = mlflow_client(settings)
    assert client.get_run(run_id).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0]

    monkeypatch.delenv("LENSOPS_FAIL_ONCE_AT_EPOCH")
    changed = load_settings(root / "params.yaml", [*TINY_TRAINING_FAST_INPUT, "train.epochs=4", "train.max_failures=0"])
    with pytest.raises(ValueError, match="other params"):
        train(changed, resume=run_id, progress=False)
    result = train(settings, resume=run_id, progress=False)
    assert result.run_id == run_id and list(result.history.epoch) == [0, 1, 2]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [0, 1, 2]  # 0 ran once
    assert client.get_run(run_id).info.status == "FINISHED"
    with pytest.raises(ValueError, match="already finished"):
        train(settings, resume=run_id, progress=False)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.model=resnet19", "did you mean 'resnet18'"),
        ("train.augment=[{Afine: {rotate: 5}}]", "unknown transform 'Afine' (did you mean 'Affine'"),
        ("train.augment=[{Affine: {rotat: 5}}]", "unknown argument 'rotat' (did you mean 'rotate'"),
        ("train.augment=[{Affine: {rotate: nonsense}}]", "train.augment[0] Affine"),
        ("train.optimiser=sgd", "did you mean 'train.optimizer'"),
        ("train.lr=-1", "train.lr"),
    ],
)
def test_invalid_training_configuration_is_a_clear_usage_error(cli, digits_project, monkeypatch, override, message):
    monkeypatch.chdir(digits_project)
    result = cli("train", "-S", override)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_training_without_a_prepared_dataset_says_what_to_run(cli, project):
    result = cli("train")
    assert result.exit_code == 1
    assert "lensops data prepare" in result.output


CLUSTER_SCRIPT = """
import sys
import ray
from ray.cluster_utils import Cluster
from lensops.core.settings import load_settings
from training.train import train

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, include_dashboard=False)
try:
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    from training.trainer import choose_input

    settings = load_settings(sys.argv[1], sys.argv[2:])
    print("INPUT", choose_input(settings)[0])  # auto: Ray Data on a cluster of several nodes
    result = train(settings, progress=False)
    print("ACCURACY", result.test_metrics["accuracy"])
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_training_across_a_two_node_cluster(digits_project, tmp_path):
    root = project_copy(digits_project, tmp_path / "project")
    script = tmp_path / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), str(root / "params.yaml"), *TINY_TRAINING, "train.epochs=1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ACCURACY" in out.stdout and "INPUT ray_data" in out.stdout


def test_tune_stops_a_hopeless_trial_and_logs_child_runs(ray_session, digits_project, tmp_path):
    """Two grid trials, one with a learning rate too small to learn: ASHA stops it at the rung."""
    from training.tune import tune

    root = project_copy(digits_project, tmp_path / "project")
    overrides = [
        *TINY_TRAINING_FAST_INPUT,
        "tune.max_epochs=3",
        "tune.grace_period=2",
        "tune.num_samples=1",
        "tune.space={train.lr: {grid: [0.003, 1.0e-7]}}",
    ]
    settings = load_settings(root / "params.yaml", overrides)
    result = tune(settings, progress=False)

    assert result.best_config == {"train.lr": 0.003}
    assert result.command == "lensops train -S train.lr=0.003"
    epochs = dict(zip(result.trials["train.lr"], result.trials["epochs"], strict=True))
    assert epochs == {0.003: 3, 1.0e-7: 2}  # the hopeless one was cut at the rung, the good one ran on

    client = mlflow_client(settings)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["lensops.stage"] == "tune" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(result.best_metrics["best_val_accuracy"])
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {
        "best_config.json",
        "trials.csv",
        "trials.png",
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    by_lr = {c.data.params["train.lr"]: c for c in children}
    assert set(by_lr) == {"0.003", "1e-07"}
    assert by_lr["1e-07"].data.tags.get("lensops.tune.stopped_by") == "ASHA" and by_lr["1e-07"].info.status == "KILLED"
    # Tune stops the finished trial's process too; its run still ends as finished, not as stopped.
    assert by_lr["0.003"].info.status == "FINISHED" and "lensops.tune.stopped_by" not in by_lr["0.003"].data.tags
    assert len(client.get_metric_history(by_lr["0.003"].info.run_id, "val_accuracy")) == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("tune.space={train.lr: {logunifrom: [0.001, 0.01]}}", "did you mean 'loguniform'"),
        ("tune.space={train.lrr: {choice: [0.001]}}", "did you mean 'train.lr'"),
        ("tune.space={train.lr: {uniform: [0.1]}}", "needs [low, high]"),
    ],
)
def test_invalid_search_space_is_a_usage_error(cli, digits_project, monkeypatch, override, message):
    monkeypatch.chdir(digits_project)
    result = cli("tune", "-S", override)
    assert result.exit_code == 2, result.output
    assert message in result.output
