"""`lensops train`: Ray Train DDP on the prepared dataset, tracked in MLflow, registered as a version.

`train(settings)` reads as the steps of a run. Each step is a function of `training.trainer`
(the Ray Train side, shared with `lensops tune`), `training.tracking` (the MLflow run),
`training.evaluate` (the one evaluation) or `lensops.core.model_artifact` (the registered version).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lensops.core import tags as T
from lensops.core.compute import ensure_ray
from lensops.core.model_artifact import baseline_frame, register_model
from lensops.core.registry import Registry
from lensops.core.settings import Settings

from . import tracking
from .datasets import stats_of
from .evaluate import Evaluation, evaluate_frame
from .lineage import lineage_tags
from .plots import confusion_matrix, plot_confusion, plot_learning_curves
from .trainer import (
    ForwardReports,
    TrainingData,
    TrainingError,
    best_model,
    build_trainer,
    choose_input,
    fit_and_watch,
    load_training_data,
    scaling_config,
    training_run_config,
)

__all__ = ["TrainResult", "TrainingError", "train"]


@dataclass
class TrainResult:
    run_id: str
    model_version: str
    test_metrics: dict[str, Any]
    history: pd.DataFrame
    epochs_run: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


def train(
    settings: Settings, *, resume: str | None = None, progress: bool = True, parent_run_id: str | None = None
) -> TrainResult:
    data = load_training_data(settings)  # the prepared split, with the configuration checked against it
    ensure_ray()  # start a local Ray, or join RAY_ADDRESS
    use_gpu = scaling_config(settings)[1]  # fails fast on train.use_gpu without a GPU
    registry = Registry.of(settings)
    run_id = (
        tracking.reopen_run(registry, settings, resume)
        if resume
        else tracking.start_run(registry, settings, parent_run_id=parent_run_id)
    )
    tracking.log_run_inputs(registry, run_id, settings, data, lineage_tags(settings, data.prepared, data.raw))
    chosen, why = choose_input(settings)
    registry.client().set_tag(run_id, T.TRAIN_INPUT, chosen)
    if progress:
        print(f"input: {chosen} ({why})", flush=True)

    started = time.perf_counter()
    result, history = _fit(settings, data, registry, run_id, progress=progress, input_path=chosen)
    seconds = time.perf_counter() - started
    if resume:  # the learning curves cover the whole run, not only the epochs after the restart
        history = _with_earlier_epochs(registry, run_id, history)

    model = best_model(result, settings, len(data.classes))
    spec = settings.train.preprocessing
    test = evaluate_frame(model, data.test, data.raw, spec, data.classes)
    val = evaluate_frame(model, data.val, data.raw, spec, data.classes)
    version = _record(settings, data, registry, run_id, model, test, val, history, seconds)
    tracking.end_run(registry, run_id)
    stopped = bool(len(history) and history.iloc[-1].get("stop"))
    extra = {"train_seconds": seconds, "use_gpu": use_gpu}
    return TrainResult(run_id, version, test.metrics, history, len(history), stopped, extra)


def _fit(settings: Settings, data: TrainingData, registry: Registry, run_id: str, *, progress: bool, input_path: str):
    """The Ray Train run, with progress; on failure the MLflow run ends FAILED and says how to resume."""
    import ray.util.queue

    queue = ray.util.queue.Queue()
    extra = {}
    if fault := os.environ.get("LENSOPS_FAIL_ONCE_AT_EPOCH"):  # resilience tests only
        extra["fail_once"] = {"epoch": int(fault), "marker": str(settings.path("ray_results") / f"{run_id}.failed")}
    storage, callbacks = settings.path("ray_results"), [ForwardReports(queue)]
    run_config = training_run_config(settings, name=run_id, storage=storage, callbacks=callbacks)
    trainer = build_trainer(settings, data, run_config, extra=extra, input_path=input_path)
    try:
        result, history = fit_and_watch(
            trainer, queue, epochs=settings.train.epochs, registry=registry, run_id=run_id, progress=progress
        )
    except (TrainingError, KeyboardInterrupt) as e:
        # Nothing is lost: the epochs so far are logged and checkpointed under this run's name.
        tracking.end_run(registry, run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if isinstance(e, KeyboardInterrupt):
            raise
        raise TrainingError(
            f"{e}\nThe finished epochs are checkpointed; continue with `lensops train --resume {run_id}`"
        ) from e
    return result, pd.DataFrame(history)


def _with_earlier_epochs(registry: Registry, run_id: str, history: pd.DataFrame) -> pd.DataFrame:
    earlier = tracking.logged_history(registry, run_id)
    first = int(history.epoch.min()) if len(history) else int(earlier.epoch.max()) + 1
    return pd.concat([earlier[earlier.epoch < first], history], ignore_index=True)


def _record(
    settings: Settings,
    data: TrainingData,
    registry: Registry,
    run_id: str,
    model,
    test: Evaluation,
    val: Evaluation,
    history: pd.DataFrame,
    seconds: float,
) -> str:
    """Charts and tables into the run and `reports/train/`, DVC's metrics, then the registered version."""
    metrics = {"test": test.metrics, "val": val.metrics}
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = _artifacts(settings, data, test, history, Path(scratch))
        tracking.log_run_results(registry, run_id, metrics, artifacts, seconds, history)
    write_dvc_outputs(test, history, settings.path("metrics"))
    baseline = _baseline(settings, data, model, val)
    size = settings.train.preprocessing.size
    return register_model(
        registry,
        run_id=run_id,
        model=model,
        example=np.zeros((2, 3, size, size), dtype=np.float32),
        classes=data.classes,
        spec=settings.train.preprocessing,
        metrics=metrics,
        baseline=baseline,
    )


def _baseline(settings: Settings, data: TrainingData, model, val: Evaluation) -> pd.DataFrame:
    """Monitoring's reference: the validation images (with the image stats serving logs) and up to
    `train.reference_max` training images, as the model embeds them through the evaluation transform."""
    cfg = settings.train
    rows = data.train.sample(min(len(data.train), cfg.reference_max), random_state=cfg.seed).sort_index()
    seen = evaluate_frame(model, rows, data.raw, cfg.preprocessing, data.classes)
    parts = [
        baseline_frame(
            val.embeddings,
            val.predicted_index,
            data.val["label_index"].to_numpy(),
            data.val["path"],
            data.classes,
            stats=stats_of(data.val, data.raw),
        ).assign(split="val"),
        baseline_frame(
            seen.embeddings, seen.predicted_index, rows["label_index"].to_numpy(), rows["path"], data.classes
        ).assign(split="train"),
    ]
    return pd.concat(parts, ignore_index=True)


def _artifacts(settings: Settings, data: TrainingData, test: Evaluation, history, folder: Path) -> list[Path]:
    """The run's charts (also under reports/train/ for people and `dvc plots`) and its per-image tables."""
    matrix = confusion_matrix(test.labels, test.predicted, data.classes)
    charts = [
        plot_confusion(matrix, data.classes, folder / "confusion_matrix.png", title="test confusion matrix"),
        plot_learning_curves(history, folder / "learning_curves.png"),
    ]
    reports = settings.path("reports") / "train"
    reports.mkdir(parents=True, exist_ok=True)
    for png in charts:
        (reports / png.name).write_bytes(png.read_bytes())
    predictions = pd.DataFrame({"actual": test.labels, "predicted": test.predicted})
    predictions.assign(path=data.test["path"].to_numpy(), score=test.scores).to_csv(
        folder / "test_predictions.csv", index=False
    )
    per_class = pd.DataFrame(test.metrics["per_class"]).T.rename_axis("class").reset_index()
    per_class.to_csv(folder / "per_class_metrics.csv", index=False)
    return [*charts, folder / "test_predictions.csv", folder / "per_class_metrics.csv"]


def write_dvc_outputs(test: Evaluation, history: pd.DataFrame, metrics_dir: Path) -> None:
    """`metrics/eval.json`, plus CSVs that `dvc plots show` renders (confusion, learning curves)."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    m = test.metrics
    summary = {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
    }
    (metrics_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    pd.DataFrame({"actual": test.labels, "predicted": test.predicted}).to_csv(
        metrics_dir / "confusion.csv", index=False
    )
    history.to_csv(metrics_dir / "learning_curves.csv", index=False)
