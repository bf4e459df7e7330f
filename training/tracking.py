"""What a training run records in MLflow, apart from the model version (`lensops.core.model_artifact`).

Every call names its run and goes through the project's `Registry` client: nothing here depends
on a process-global tracking URI or an "active run".
"""

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
from lensops.core import tags as T
from lensops.core.errors import UsageError
from lensops.core.registry import TRIGGER_ENV, Registry, who
from lensops.core.settings import Settings

from .lineage import params_hash

EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "best_val_accuracy",
    "lr",
    "images_per_second",
)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted MLflow params; lists and mappings as JSON."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def as_params(tree: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flatten(tree).items()]


def reopen_run(registry: Registry, settings: Settings, run_id: str) -> str:
    """A stopped training run, checked and marked running again, for `lensops train --resume`."""
    import mlflow

    client = registry.client()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UsageError(f"--resume {run_id}: no such MLflow run in {registry.tracking_uri}") from None
    if run.info.status == "FINISHED":
        raise UsageError(f"--resume {run_id}: that run already finished; start a new one with `lensops train`")
    if run.data.tags.get(T.STAGE) != "train":
        raise UsageError(f"--resume {run_id}: not a lensops training run")
    started_with = run.data.tags.get(T.PARAMS_HASH)
    if started_with and started_with != params_hash(settings):
        raise UsageError(
            f"--resume {run_id}: the run started with other params (hash {started_with}, "
            f"now {params_hash(settings)}); resume with the same params.yaml and -S overrides"
        )
    client.update_run(run_id, status="RUNNING")
    return run_id


def start_run(registry: Registry, settings: Settings, *, parent_run_id: str | None = None) -> str:
    """A new training run in the project's experiment; linked to the retraining that started it, if any."""
    tags = {T.STAGE: "train", T.ACTOR: who()}
    if trigger := os.environ.get(TRIGGER_ENV):  # started by `lensops retrain` (copied onto the version too)
        tags[T.RETRAIN_RUN] = trigger
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    name = f"{settings.train.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = registry.client().create_run(registry.experiment_id(settings.registry.experiment), run_name=name, tags=tags)
    return run.info.run_id


def log_run_inputs(registry: Registry, run_id: str, settings: Settings, data, tags: dict[str, str]) -> None:
    """Params, lineage tags, the dataset as an MLflow input, the augmentation and a preview of it."""
    import albumentations as A
    from mlflow.entities import DatasetInput, InputTag, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client = registry.client()
    fresh = not client.get_run(run_id).data.params  # a resumed run keeps the params it started with
    params = as_params(settings.model_dump(mode="json", by_alias=True)) if fresh else []
    client.log_batch(run_id, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
    with warnings.catch_warnings():  # MLflow's hints about a local path source and integer columns
        warnings.simplefilter("ignore", UserWarning)
        import mlflow.data

        name = f"prepared@{tags.get(T.DATA_HASH, '')[:12]}"
        dataset = mlflow.data.from_pandas(data.manifest, source=str(data.prepared), name=name, targets="label")
        context = [InputTag(MLFLOW_DATASET_CONTEXT, "training")]
        client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), context)])
    client.log_dict(run_id, {"classes": data.classes}, "classes.json")
    if fresh:  # every setting as it was, for `lensops reproduce` (params are strings, cut at 6,000 characters)
        client.log_dict(run_id, settings.model_dump(mode="json", by_alias=True), "settings.json")
    client.log_dict(run_id, A.to_dict(data.augmentation), "augmentation.json")
    with tempfile.TemporaryDirectory() as scratch:
        client.log_artifact(run_id, str(_augmentation_preview(settings, data, Path(scratch))))


def _augmentation_preview(settings: Settings, data, folder: Path) -> Path:
    """One image per class (up to eight), each with seven augmented draws."""
    picks = data.manifest[data.manifest.split == "train"].groupby("label", sort=True).head(1).head(8)
    images = []
    for p in picks["path"]:
        with Image.open(data.raw / p) as image:
            image.load()
            images.append(image.copy())
    rows = augmentation_samples(images, settings.train.preprocessing, data.augmentation)
    return plot_augmentations(list(zip(picks["label"], rows, strict=True)), folder / "augmentation_preview.png")


def log_run_results(
    registry: Registry,
    run_id: str,
    metrics: dict[str, dict[str, Any]],
    artifacts: list[Path],
    train_seconds: float,
    history: pd.DataFrame,
) -> None:
    """Summary metrics (test and validation), the artifacts, and metrics.json, once the epochs are in."""
    import mlflow
    from mlflow.entities import Metric

    mlflow.flush_async_logging()  # per-epoch metrics first, so the run is complete before it ends
    test, val = metrics["test"], metrics["val"]
    summary = {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "val_accuracy": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        "train_seconds": train_seconds,
        "epochs_run": float(len(history)),
        **{f"test_recall.{c}": m["recall"] for c, m in test["per_class"].items()},
    }
    stamp = int(time.time() * 1000)
    client = registry.client()
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in summary.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.log_text(run_id, json.dumps(metrics, indent=2), "metrics.json")


def logged_history(registry: Registry, run_id: str) -> pd.DataFrame:
    """The per-epoch metrics a run logged so far (a resumed run's earlier epochs)."""
    import mlflow

    mlflow.flush_async_logging()
    client = registry.client()
    columns = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in EPOCH_METRICS}
    frame = pd.DataFrame(columns).rename_axis("epoch").reset_index()
    return frame.sort_values("epoch", ignore_index=True)


def end_run(registry: Registry, run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.flush_async_logging()
    registry.client().set_terminated(run_id, status=status)
