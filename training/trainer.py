"""The Ray Train side of a run, shared by `lensops train` and every `lensops tune` trial.

`load_training_data` reads the prepared split and checks the configuration against it;
`build_trainer` makes the `TorchTrainer` (workers sized from what Ray sees, the per-worker loop,
Ray Data or DataLoader input, checkpoints and failure handling); `fit_and_watch` runs it with live
progress on the driver and each epoch's metrics sent to MLflow as they arrive.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from ray.train import UserCallback

from data.prepare import load_prepared
from data.transforms import build_augmentation
from lensops.core.compute import cluster_cpus, cluster_gpus
from lensops.core.errors import CheckFailed
from lensops.core.registry import Registry
from lensops.core.settings import Settings

from .datasets import frame_rows, make_dataset, split_frame
from .loop import STATE_FILE, train_loop_per_worker
from .models import MODELS, ModelError, create_model


class TrainingError(CheckFailed):
    """The run cannot start or did not finish; the message says why and what to do."""


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
    cfg = settings.train
    if cfg.model not in MODELS:
        create_model(cfg.model, len(classes))  # raises ModelError naming the nearest model
    if cfg.weights is not None and not settings.path(cfg.weights).is_file():
        raise ModelError(f"train.weights: {settings.path(cfg.weights)} does not exist")
    augmentation = build_augmentation(cfg.augment)  # AugmentationError naming the nearest transform or argument
    verify_images(manifest, raw)
    frames = [split_frame(manifest, s) for s in ("train", "val", "test")]
    if any(len(f) == 0 for f in frames):
        raise TrainingError(
            "the prepared dataset has an empty train, val or test split; check prepare.val and prepare.test"
        )
    return TrainingData(manifest, classes, raw, prepared, *frames, augmentation)


def verify_images(manifest: pd.DataFrame, raw: Path) -> None:
    """Every image still holds what `prepare` hashed: one that changed, went missing or no longer decodes
    stops the run here, named, instead of failing a worker mid-epoch (and again on every retry)."""
    if "sha256" not in manifest:
        return

    def problem(path: str, sha256: str) -> str | None:
        file = raw / path
        try:
            data = file.read_bytes()
        except OSError as e:
            return f"{file}: cannot be read ({e.strerror})"
        if hashlib.sha256(data).hexdigest() != sha256:
            return f"{file}: changed since it was prepared (its sha256 no longer matches the manifest)"
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [p for p in pool.map(problem, manifest["path"], manifest["sha256"]) if p]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise TrainingError(
            f"{len(problems)} prepared image(s) no longer match the dataset:\n  {shown}\n"
            "restore them (`dvc checkout data/raw`) or prepare again (`lensops data prepare`)"
        )


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


def choose_input(settings: Settings) -> tuple[str, str]:
    """`train.input` as the run uses it, and why: `auto` picks the faster path for the cluster Ray sees.

    Ray Data decodes in tasks that Ray places anywhere in the cluster, so decoding scales apart from
    the trainers: the path for several nodes, or for GPU workers fed by CPUs. On one node without a
    GPU its start-up and the hand-off of every batch between processes cost more than they give
    (`benchmarks/train_throughput.py`: 0.79 of a plain loop against 1.15 for a DataLoader per worker).
    """
    import ray

    cfg = settings.train
    if cfg.input != "auto":
        return cfg.input, "train.input"
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    gpus = cluster_gpus() if cfg.use_gpu is not False else 0
    if nodes > 1 or gpus > 0:
        return "ray_data", f"auto: {nodes} node(s), {gpus:g} GPU(s), so decoding scales apart from the trainers"
    return "dataloader", "auto: one node without a GPU, where a DataLoader per worker is faster than Ray Data"


def loop_config(settings: Settings, data: TrainingData, input_path: str) -> dict[str, Any]:
    """What every worker's loop needs (plain JSON: it travels to the workers)."""
    cfg = settings.train
    config = {
        "train": cfg.model_dump(mode="json"),
        "num_classes": len(data.classes),
        "steps_per_epoch": int(np.ceil(len(data.train) / (cfg.batch_size * cfg.num_workers))),
    }
    if cfg.weights is not None:
        config["train"]["weights"] = str(settings.path(cfg.weights))
    config["train"]["input"] = input_path  # the workers never see `auto`
    if config["train"]["input"] == "dataloader" or cfg.deterministic:  # each worker builds its own input
        config["raw"] = str(data.raw)
        config["rows"] = {"train": frame_rows(data.train), "val": frame_rows(data.val)}
    return config


def trainer_datasets(settings: Settings, data: TrainingData, input_path: str) -> dict[str, Any]:
    """Ray Datasets that decode (and, for training, augment) on CPU and stream to the workers."""
    cfg = settings.train
    if input_path == "dataloader" or cfg.deterministic:
        return {}  # each worker reads its share itself (see loop_config)
    return {
        "train": make_dataset(
            data.train, data.raw, cfg.preprocessing, augment=cfg.augment, seed=cfg.seed, batch_size=cfg.batch_size
        ),
        "val": make_dataset(data.val, data.raw, cfg.preprocessing, augment=None, batch_size=256),
    }


def build_trainer(
    settings: Settings, data: TrainingData, run_config, *, extra: dict | None = None, input_path: str | None = None
):
    """The TorchTrainer of one run: DDP workers sized from what Ray sees, the per-worker loop, its input
    (`input_path`: `choose_input`'s answer when the caller already asked)."""
    from ray.train.torch import TorchTrainer

    input_path = input_path or choose_input(settings)[0]
    Path(run_config.storage_path).mkdir(parents=True, exist_ok=True)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config(settings, data, input_path), **(extra or {})},
        scaling_config=scaling_config(settings)[0],
        datasets=trainer_datasets(settings, data, input_path),
        run_config=run_config,
    )


def training_run_config(settings: Settings, *, name: str, storage: Path, callbacks: list):
    """A training run's Ray Train config: checkpoints of the best epochs kept, worker failures survived."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    cfg = settings.train
    return RunConfig(
        name=name,  # one Ray Train run per MLflow run: `--resume RUN` finds its checkpoints by name
        storage_path=str(storage),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.keep_checkpoints,
            checkpoint_score_attribute="val_accuracy",
            checkpoint_score_order="max",
        ),
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        callbacks=callbacks,
        logging_config=LoggingConfig(log_level="WARNING"),  # the driver shows progress itself
    )


class ForwardReports(UserCallback):
    """Ray Train callback (runs in the controller): forwards each epoch's metrics to the driver."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put(dict(metrics[0]))

    def after_exception(self, run_context, worker_exceptions):
        self.queue.put({"worker_failure": {rank: repr(e)[:300] for rank, e in worker_exceptions.items()}})


def fit_and_watch(trainer, queue, *, epochs: int, registry: Registry, run_id: str, progress: bool):
    """trainer.fit() in a thread; the driver shows progress and logs each epoch to MLflow as it arrives."""
    from rich.console import Console

    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_safe_fit(trainer)), daemon=True)
    thread.start()
    history: list[dict] = []
    console = Console(stderr=True)
    with _progress(console, progress) as bar:
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
            bar.update(task, completed=item["epoch"] + 1, status=_status(item))
    thread.join()
    if isinstance(outcome.get("result"), BaseException):
        raise TrainingError(f"training failed: {outcome['result']}") from outcome["result"]
    return outcome["result"], history


def _progress(console, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("epoch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}")]
    return Progress(*columns, TimeElapsedColumn(), console=console, disable=not enabled)


def _status(item: dict[str, Any]) -> str:
    return (
        f"loss {item['train_loss']:.3f}  acc {item['train_accuracy']:.3f}  "
        f"val_acc {item['val_accuracy']:.3f}  {item['images_per_second']:.0f} img/s"
    )


def _safe_fit(trainer):
    try:
        return trainer.fit()
    except BaseException as e:  # surfaced on the driver thread by fit_and_watch
        return e


def best_model(result, settings: Settings, n_classes: int) -> torch.nn.Module:
    """The checkpoint with the best validation accuracy, as an eval-mode model on the CPU."""
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
