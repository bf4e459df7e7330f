"""`lensops data audit`: the images most likely mislabelled, out of distribution or near-duplicated.

`audit(settings)` reads as its steps:

1. the prepared dataset (every split: a wrong label hurts wherever it is);
2. k folds (`audit.folds`), stratified by label, identical images (same sha256) kept in one fold;
3. one Ray task per fold trains a fresh model on the other folds, with train's model factory,
   optimiser, schedule, augmentation and preprocessing for `audit.epochs` epochs, then predicts its
   own fold (probabilities, never seen in training) and embeds every image (its feature space);
4. cleanlab's checks on those out-of-sample predictions and embeddings (`training.audit_issues`);
5. the ranked table, the grid of suspects, a `labels.csv` for `lensops label import`, and a summary
   (`training.audit_report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from data.prepare import load_prepared
from lensops.core.compute import cluster_cpus, ensure_ray
from lensops.core.errors import CheckFailed, NotFound, UsageError
from lensops.core.settings import Settings, TrainSettings

from .audit_issues import find_issues, rank_suspects
from .audit_report import AuditReport, write_report
from .datasets import frame_rows, load_images, torch_loader
from .evaluate import predict
from .loop import make_optimizer, make_schedule, run_epoch, seed_everything
from .models import create_model

__all__ = ["AuditError", "AuditReport", "assign_folds", "audit"]


class AuditError(CheckFailed):
    """A fold's training failed; the message names the fold and the error."""


@dataclass
class FoldOutput:
    fold: int
    held_out: np.ndarray  # manifest row numbers this fold predicted
    probabilities: np.ndarray  # (held out, classes): out of sample
    embeddings: np.ndarray  # (all images, dim): every image in this fold model's feature space
    train_accuracy: float


def audit(settings: Settings, *, out: Path | None = None, progress: bool = True) -> AuditReport:
    manifest, classes, raw = _prepared(settings)
    folds = assign_folds(manifest, settings.audit.folds, settings.audit.seed)
    ensure_ray()  # start a local Ray, or join RAY_ADDRESS
    started = time.perf_counter()
    outputs = run_folds(settings, manifest, raw, len(classes), folds, progress=progress)
    fold_seconds = time.perf_counter() - started
    probabilities = np.zeros((len(manifest), len(classes)), dtype=np.float64)
    for o in outputs:
        probabilities[o.held_out] = o.probabilities
    issues = find_issues(
        manifest["label_index"].to_numpy(), probabilities, [o.embeddings for o in outputs], folds,
        neighbours=settings.audit.neighbours,
    )  # fmt: skip
    table = rank_suspects(manifest, classes, probabilities, issues)
    meta = {
        "folds": settings.audit.folds,
        "epochs": settings.audit.epochs,
        "model": settings.train.model,
        "size": settings.train.preprocessing.size,
        "fold_train_accuracy": [round(o.train_accuracy, 4) for o in outputs],
        "out_of_sample_accuracy": float((probabilities.argmax(1) == manifest["label_index"].to_numpy()).mean()),
        "fold_seconds": round(fold_seconds, 1),
    }
    target = out or settings.path(settings.audit.report_dir)
    return write_report(table, raw, target, meta, top=settings.audit.top, started=started)


def _prepared(settings: Settings) -> tuple[pd.DataFrame, list[str], Path]:
    prepared = settings.path(settings.data.prepared)
    manifest, classes, raw = load_prepared(prepared)  # NotFound naming `lensops data prepare`
    if not raw.is_dir():
        raise NotFound(f"{raw} (the images of {prepared}) does not exist; run `lensops data prepare` again")
    smallest = manifest.groupby("label").size().sort_values()
    if len(smallest) < 2:
        raise UsageError(f"{prepared} has one class ({smallest.index[0]!r}); an audit needs at least 2")
    k = settings.audit.folds
    if smallest.iloc[0] < k:
        raise UsageError(
            f"class {smallest.index[0]!r} has {smallest.iloc[0]} images, fewer than audit.folds={k}; "
            f"lower it (e.g. -S audit.folds={max(2, int(smallest.iloc[0]))}) or add images"
        )
    return manifest.reset_index(drop=True), classes, raw


def assign_folds(manifest: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """The fold of every row: stratified by label; identical images (same sha256) share a fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = np.full(len(manifest), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(manifest, manifest["label_index"], manifest["sha256"])):
        folds[held_out] = fold
    return folds


def fold_recipe(settings: Settings) -> dict[str, Any]:
    """train's recipe (model, optimiser, schedule, augmentation, preprocessing) at the audit's epochs, as JSON."""
    recipe = settings.train.model_dump(mode="json")
    recipe.update(epochs=settings.audit.epochs, seed=settings.train.seed + settings.audit.seed)
    if settings.train.weights is not None:
        recipe["weights"] = str(settings.path(settings.train.weights))
    return recipe


def run_folds(
    settings: Settings, manifest: pd.DataFrame, raw: Path, n_classes: int, folds: np.ndarray, *, progress: bool
) -> list[FoldOutput]:
    """One Ray task per fold, with a progress bar of fold-epochs; results in fold order."""
    import ray
    from ray.util.queue import Queue

    k, recipe = int(folds.max()) + 1, fold_recipe(settings)
    # Fractional CPUs: every fold is scheduled at once and shares the cores; whole CPUs per task
    # would leave folds waiting on a 2-core machine, and Ray's own work with none.
    cpus = max(0.1, min(1.0, cluster_cpus() / k))
    task = ray.remote(num_cpus=cpus, max_retries=1)(train_fold)
    queue = Queue()
    rows_ref = ray.put({"all": frame_rows(manifest)})
    pending = {
        task.remote(f, rows_ref, np.flatnonzero(folds != f), np.flatnonzero(folds == f), str(raw), recipe, n_classes,
                    queue): f
        for f in range(k)
    }  # fmt: skip
    results: dict[int, FoldOutput] = {}
    with _progress(progress) as bar:
        handle = bar.add_task("audit", total=k * settings.audit.epochs, status=f"{k} folds starting…")
        while pending or not queue.empty():
            done, _ = ray.wait(list(pending), timeout=0.5) if pending else ([], [])
            for ref in done:
                fold = pending.pop(ref)
                try:
                    results[fold] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    queue.shutdown()
                    raise AuditError(f"training fold {fold} failed: {e}") from e
            while not queue.empty():
                item = queue.get()
                bar.advance(handle)
                bar.update(handle, status=f"fold {item['fold']} epoch {item['epoch'] + 1}: acc {item['accuracy']:.3f}")
    queue.shutdown()
    return [results[f] for f in range(k)]


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("fold-epochs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}")]
    return Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)


def train_fold(
    fold: int,
    rows: dict[str, Any],
    train_rows: np.ndarray,
    held_out: np.ndarray,
    raw: str,
    recipe: dict[str, Any],
    n_classes: int,
    queue=None,
) -> FoldOutput:
    """Train on `train_rows` as `lensops train` would (one process, no DDP), then predict `held_out`."""
    cfg = TrainSettings.model_validate(recipe)
    torch.set_num_threads(1)  # a fractional CPU each: one thread per fold, the folds side by side
    seed_everything(cfg.seed + fold)
    everything = pd.DataFrame(rows["all"])
    train = everything.iloc[train_rows]
    loader = torch_loader(
        frame_rows(train), raw, cfg.preprocessing.model_dump(), augment=cfg.augment, seed=cfg.seed + fold,
        batch_size=cfg.batch_size, rank=0, world=1, workers=0,
    )  # fmt: skip
    model = create_model(cfg.model, n_classes, weights=cfg.weights, dropout=cfg.dropout)
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    device, accuracy = torch.device("cpu"), 0.0
    for epoch in range(cfg.epochs):
        loader.sampler.set_epoch(epoch)
        stats = run_epoch(model, loader, device, optimizer=optimizer, schedule=schedule, criterion=criterion,
                          cfg=cfg, channels_last=False)  # fmt: skip
        accuracy = stats["accuracy"]
        if queue is not None:
            queue.put({"fold": fold, "epoch": epoch, "accuracy": accuracy})
    model.eval()
    images = load_images(everything, Path(raw), cfg.preprocessing)  # every image: this fold's feature space
    logits, embeddings = predict(model, images)
    probabilities = torch.softmax(torch.from_numpy(logits[held_out]), dim=1).numpy()
    return FoldOutput(fold, held_out, probabilities.astype(np.float64), embeddings.astype(np.float32), accuracy)
