"""What a training run records in MLflow, apart from the model version (see lensops.registry)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from data.plots import plot_augmentations
from data.transforms import augmentation_samples
from lensops import registry
from lensops.registry import TRIGGER_ENV
from lensops.settings import Settings

from .lineage import params_hash


def start_training_run(settings: Settings, *, resume: str | None = None, parent_run_id: str | None = None):
    """A new MLflow run, or the stopped run `resume` reopened."""
    import mlflow

    registry.client(settings)
    if resume:
        try:
            run = mlflow.MlflowClient().get_run(resume)
        except mlflow.exceptions.MlflowException:
            raise ValueError(f"--resume {resume}: no such MLflow run in {mlflow.get_tracking_uri()}") from None
        if run.info.status == "FINISHED":
            raise ValueError(f"--resume {resume}: that run already finished; start a new one with `lensops train`")
        if run.data.tags.get("lensops.stage") != "train":
            raise ValueError(f"--resume {resume}: not a lensops training run")
        started_with = run.data.tags.get("lensops.params_hash")
        if started_with and started_with != params_hash(settings):
            raise ValueError(
                f"--resume {resume}: the run started with other params (hash {started_with}, "
                f"now {params_hash(settings)}); resume with the same params.yaml and -S overrides"
            )
        return mlflow.start_run(run_id=run.info.run_id)
    tags = {"lensops.stage": "train", "lensops.actor": registry.who()}
    trigger = os.environ.get(TRIGGER_ENV)
    if trigger:  # started by `lensops retrain`: link back to the retrain run (copied onto the version too)
        tags["lensops.trigger_run_id"] = trigger
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    name = f"{settings.train.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    return mlflow.start_run(experiment_id=registry.experiment_id(settings), run_name=name, tags=tags)


def log_run_inputs(
    settings: Settings,
    manifest: pd.DataFrame,
    prepared: Path,
    classes: list[str],
    augmentation,
    raw: Path,
    *,
    tags: dict[str, str],
) -> None:
    """Params, lineage tags, the dataset as an MLflow input, the augmentation and a preview of it."""
    import albumentations as A
    import mlflow

    params = registry.flatten(settings.model_dump(mode="json", by_alias=True))
    if not mlflow.active_run().data.params:  # a resumed run keeps the params it started with
        mlflow.log_params(params)
    mlflow.set_tags(tags)
    with warnings.catch_warnings():  # MLflow's hints about a local path source and integer columns
        warnings.simplefilter("ignore", UserWarning)
        name = f"prepared@{tags.get('lensops.data_hash', '')[:12]}"
        dataset = mlflow.data.from_pandas(manifest, source=str(prepared), name=name, targets="label")
        mlflow.log_input(dataset, context="training")
    mlflow.log_dict({"classes": classes}, "classes.json")
    mlflow.log_dict(A.to_dict(augmentation), "augmentation.json")

    # One image per class (up to eight), each with seven augmented draws.
    picks = manifest[manifest.split == "train"].groupby("label", sort=True).head(1).head(8)
    images = []
    for p in picks["path"]:
        with Image.open(raw / p) as image:
            image.load()
            images.append(image.copy())
    rows = augmentation_samples(images, settings.train.preprocessing, augmentation)
    with tempfile.TemporaryDirectory() as scratch:
        preview = plot_augmentations(
            list(zip(picks["label"], rows, strict=True)), Path(scratch) / "augmentation_preview.png"
        )
        mlflow.log_artifact(str(preview))


def log_run_results(
    run_id: str,
    test: dict[str, Any],
    val: dict[str, Any],
    artifacts: list[Path],
    train_seconds: float,
    history: pd.DataFrame,
) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    mlflow.flush_async_logging()  # per-epoch metrics first, so the run is complete before it ends
    summary = {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "train_seconds": train_seconds,
        "epochs_run": float(len(history)),
    }
    summary.update({f"test_recall.{c}": m["recall"] for c, m in test["per_class"].items()})
    for key, value in summary.items():
        client.log_metric(run_id, key, float(value))
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.log_text(run_id, json.dumps({"test": test, "val": val}, indent=2), "metrics.json")


EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "best_val_accuracy",
    "lr",
    "images_per_second",
)


def logged_history(run_id: str) -> pd.DataFrame:
    """The per-epoch metrics a run logged so far (a resumed run's earlier epochs)."""
    import mlflow

    client = mlflow.MlflowClient()
    mlflow.flush_async_logging()
    columns = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in EPOCH_METRICS}
    frame = pd.DataFrame(columns).rename_axis("epoch").reset_index()
    return frame.sort_values("epoch", ignore_index=True)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.flush_async_logging()
    if (run := mlflow.active_run()) is not None and run.info.run_id == run_id:
        mlflow.end_run(status=status)
