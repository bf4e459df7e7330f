"""`lensops train`: Ray Train DDP on the prepared dataset, tracked in MLflow, registered as a version.

`train(settings)` reads as its steps: load the prepared split, check the configuration,
start or join Ray, open the MLflow run, fit with Ray Train (live progress on the driver),
evaluate the best checkpoint on the test split, and register the model with everything
serving and monitoring need.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ray.train import UserCallback

from data.prepare import load_prepared
from data.transforms import build_augmentation
from lensops import registry
from lensops.compute import cluster_cpus, cluster_gpus, ensure_ray
from lensops.settings import Settings

from . import tracking
from .datasets import frame_rows, make_dataset, split_frame, stats_of
from .evaluate import (
    classification_metrics,
    confusion,
    plot_confusion,
    plot_learning_curves,
    predict_frame,
    prediction_rows,
    write_dvc_outputs,
)
from .lineage import lineage_tags
from .loop import STATE_FILE, train_loop_per_worker
from .models import MODELS, ModelError, create_model


class TrainingError(RuntimeError):
    """The run cannot start or did not finish; the message says why and what to do."""


@dataclass
class TrainResult:
    run_id: str
    model_version: str
    test_metrics: dict[str, Any]
    history: pd.DataFrame
    epochs_run: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _check_configuration(settings: Settings, n_classes: int):
    cfg = settings.train
    if cfg.model not in MODELS:
        create_model(cfg.model, n_classes)  # raises ModelError naming the nearest model
    if cfg.weights is not None and not settings.path(cfg.weights).is_file():
        raise ModelError(f"train.weights: {settings.path(cfg.weights)} does not exist")
    return build_augmentation(cfg.augment)  # raises AugmentationError naming the nearest transform/argument


def scaling_config(settings: Settings):
    """Workers sized from what Ray sees: whole CPUs per worker would starve Ray Data on a small machine."""
    from ray.train import ScalingConfig

    cfg = settings.train
    use_gpu = cluster_gpus() > 0 if cfg.use_gpu == "auto" else bool(cfg.use_gpu)
    if use_gpu and cluster_gpus() == 0:
        raise TrainingError("train.use_gpu is true but Ray sees no GPU; set train.use_gpu=auto or false")
    # Half the CPUs go to the training workers, the rest to decoding and augmentation.
    cpus = max(0.1, min(1.0, cluster_cpus() / 2 / cfg.num_workers))
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}), use_gpu


class _ForwardReports(UserCallback):
    """Ray Train callback (runs in the controller): forwards each epoch's metrics to the driver."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put(dict(metrics[0]))

    def after_exception(self, run_context, worker_exceptions):
        self.queue.put({"worker_failure": {rank: repr(e)[:300] for rank, e in worker_exceptions.items()}})


def _fit(trainer, queue, *, epochs: int, run_id: str, progress: bool) -> tuple[Any, list[dict]]:
    """trainer.fit() in a thread; the driver shows progress and logs each epoch to MLflow as it arrives."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_safe_fit(trainer)), daemon=True)
    thread.start()
    history: list[dict] = []
    console = Console(stderr=True)
    columns = [
        TextColumn("epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("train", total=epochs, status="starting workers…")
        while thread.is_alive() or queue.qsize():
            try:
                item = queue.get(timeout=0.5)
            except Exception:  # queue.Empty from Ray's queue
                continue
            if "worker_failure" in item:
                console.print(f"[yellow]worker failure[/] {item['worker_failure']}; resuming from the last checkpoint")
                continue
            history = [h for h in history if h["epoch"] < item["epoch"]] + [item]  # a restart re-reports nothing twice
            registry.log_epoch(run_id, item)
            status = (
                f"loss {item['train_loss']:.3f}  acc {item['train_accuracy']:.3f}  "
                f"val_acc {item['val_accuracy']:.3f}  {item['images_per_second']:.0f} img/s"
            )
            bar.update(task, completed=item["epoch"] + 1, status=status)
    thread.join()
    if isinstance(outcome.get("result"), BaseException):
        raise TrainingError(f"training failed: {outcome['result']}") from outcome["result"]
    return outcome["result"], history


def _safe_fit(trainer):
    try:
        return trainer.fit()
    except BaseException as e:  # surfaced on the driver thread by _fit
        return e


def _best_model(result, settings: Settings, n_classes: int) -> torch.nn.Module:
    best = (
        result.get_best_checkpoint(metric="val_accuracy", mode="max")
        if hasattr(result, "get_best_checkpoint")
        else None
    )
    checkpoint = best or result.checkpoint
    if checkpoint is None:
        raise TrainingError("the run reported no checkpoint")
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model = create_model(settings.train.model, n_classes, dropout=settings.train.dropout)
    model.load_state_dict(state["model"])
    return model.eval()


@dataclass
class TrainingData:
    """The prepared dataset as training reads it, with the configuration checked against it."""

    manifest: pd.DataFrame
    classes: list[str]
    raw: Path
    prepared: Path
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    augmentation: Any


def load_training_data(settings: Settings) -> TrainingData:
    prepared = settings.path(settings.data.prepared)
    if not (prepared / "manifest.parquet").is_file():
        raise TrainingError(
            f"{prepared} has no prepared dataset; run `lensops data prepare` (or `dvc repro prepare`) first"
        )
    manifest, classes, raw = load_prepared(prepared)
    augmentation = _check_configuration(settings, len(classes))
    frames = [split_frame(manifest, s) for s in ("train", "val", "test")]
    if any(len(f) == 0 for f in frames):
        raise TrainingError(
            "the prepared dataset has an empty train, val or test split; check prepare.val and prepare.test"
        )
    return TrainingData(manifest, classes, raw, prepared, *frames, augmentation)


def loop_config(settings: Settings, data: TrainingData) -> dict[str, Any]:
    """What every worker's loop needs (plain JSON: it travels to the workers)."""
    cfg = settings.train
    config = {
        "train": cfg.model_dump(mode="json"),
        "num_classes": len(data.classes),
        "steps_per_epoch": int(np.ceil(len(data.train) / (cfg.batch_size * cfg.num_workers))),
    }
    if cfg.weights is not None:
        config["train"]["weights"] = str(settings.path(cfg.weights))
    if cfg.input == "dataloader":
        config["raw"] = str(data.raw)
        config["rows"] = {"train": frame_rows(data.train), "val": frame_rows(data.val)}
    return config


def trainer_datasets(settings: Settings, data: TrainingData) -> dict[str, Any]:
    """Ray Datasets that decode (and, for training, augment) on CPU and stream to the workers."""
    cfg = settings.train
    if cfg.input == "dataloader":
        return {}  # each worker reads its share itself (see loop_config)
    return {
        "train": make_dataset(
            data.train, data.raw, cfg.preprocessing, augment=cfg.augment, seed=cfg.seed, batch_size=cfg.batch_size
        ),
        "val": make_dataset(data.val, data.raw, cfg.preprocessing, augment=None, batch_size=256),
    }


def train(
    settings: Settings,
    *,
    resume: str | None = None,
    progress: bool = True,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    import ray.util.queue
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    cfg = settings.train
    data = load_training_data(settings)
    manifest, classes, raw, prepared = data.manifest, data.classes, data.raw, data.prepared
    val_frame, test_frame = data.val, data.test

    ensure_ray()
    scaling, use_gpu = scaling_config(settings)
    run = tracking.start_training_run(settings, resume=resume, parent_run_id=parent_run_id)
    run_id = run.info.run_id
    tracking.log_run_inputs(
        settings,
        manifest,
        prepared,
        classes,
        data.augmentation,
        raw,
        tags={**lineage_tags(settings, prepared), **(tags or {})},
    )

    config = loop_config(settings, data)
    if fault := os.environ.get("LENSOPS_FAIL_ONCE_AT_EPOCH"):  # resilience tests only
        config["fail_once"] = {"epoch": int(fault), "marker": str(settings.path("ray_results") / f"{run_id}.failed")}

    queue = ray.util.queue.Queue()
    storage = settings.path("ray_results")
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=scaling,
        datasets=trainer_datasets(settings, data),
        run_config=RunConfig(
            name=run_id,  # one Ray Train run per MLflow run: `--resume RUN` finds its checkpoints by name
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute="val_accuracy",
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            callbacks=[_ForwardReports(queue)],
            logging_config=LoggingConfig(log_level="WARNING"),  # the driver shows progress itself
        ),
    )
    started = time.perf_counter()
    try:
        result, history = _fit(trainer, queue, epochs=cfg.epochs, run_id=run_id, progress=progress)
    except (TrainingError, KeyboardInterrupt) as e:
        # Nothing is lost: the epochs so far are logged and checkpointed under this run's name.
        tracking.end_run(run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if isinstance(e, KeyboardInterrupt):
            raise
        raise TrainingError(
            f"{e}\nThe finished epochs are checkpointed; continue with `lensops train --resume {run_id}`"
        ) from e
    train_seconds = time.perf_counter() - started
    history_frame = pd.DataFrame(history)
    if resume:  # the learning curves cover the whole run, not only the epochs after the restart
        earlier = tracking.logged_history(run_id)
        first = int(history_frame.epoch.min()) if len(history_frame) else cfg.epochs
        history_frame = pd.concat([earlier[earlier.epoch < first], history_frame], ignore_index=True)

    model = _best_model(result, settings, len(classes))
    test = predict_frame(model, test_frame, raw, cfg.preprocessing)
    val = predict_frame(model, val_frame, raw, cfg.preprocessing)
    test_metrics = classification_metrics(test, classes)
    val_metrics = classification_metrics(val, classes)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        matrix = confusion(test, classes)
        artifacts = [
            plot_confusion(matrix, classes, scratch / "confusion_matrix.png", title="test confusion matrix"),
            plot_learning_curves(history_frame, scratch / "learning_curves.png"),
        ]
        rows = prediction_rows(test, classes).assign(
            path=test_frame["path"].to_numpy(), score=test.probabilities.max(axis=1)
        )
        rows.to_csv(scratch / "test_predictions.csv", index=False)
        artifacts.append(scratch / "test_predictions.csv")
        per_class = pd.DataFrame(test_metrics["per_class"]).T.rename_axis("class").reset_index()
        per_class.to_csv(scratch / "per_class_metrics.csv", index=False)
        artifacts.append(scratch / "per_class_metrics.csv")
        write_dvc_outputs(test_metrics, prediction_rows(test, classes), history_frame, settings.path("metrics"))
        for png in artifacts[:2]:  # also under reports/train/ for people and `dvc plots`
            (settings.path("reports") / "train").mkdir(parents=True, exist_ok=True)
            (settings.path("reports") / "train" / png.name).write_bytes(png.read_bytes())
        baseline = registry.baseline_frame(
            val.embeddings, val.predicted, val.labels, val_frame["path"], classes, stats=stats_of(val_frame, raw)
        )
        tracking.log_run_results(run_id, test_metrics, val_metrics, artifacts, train_seconds, history_frame)
        version = registry.register_model(
            settings,
            run_id=run_id,
            model=model,
            example=np.zeros((2, 3, cfg.preprocessing.size, cfg.preprocessing.size), dtype=np.float32),
            classes=classes,
            spec=cfg.preprocessing,
            metrics={"test": test_metrics, "val": val_metrics},
            baseline=baseline,
        )
    tracking.end_run(run_id)
    stopped = bool(history and history[-1].get("stop"))
    return TrainResult(
        run_id,
        version,
        test_metrics,
        history_frame,
        len(history_frame),
        stopped,
        {"train_seconds": train_seconds, "use_gpu": use_gpu},
    )
