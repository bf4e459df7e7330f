"""The per-worker training loop that Ray Train runs in every DDP process.

Reads top to bottom: set up, resume from the last checkpoint if there is one, then per epoch
train, validate, agree on the metrics across workers, report them with a checkpoint, and stop
early when validation accuracy has not improved for `early_stopping_patience` epochs.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lensops.core.settings import TrainSettings

from .models import create_model

STATE_FILE = "state.pt"
DTYPES = {"image": torch.float32, "label": torch.int64}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainSettings) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: decaying them only hurts (standard practice).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainSettings, steps_per_epoch: int):
    """A per-step learning-rate multiplier: one-cycle (warm-up, then cosine down), cosine, or flat.

    The step count is an estimate (shards can differ by a batch), so progress is clamped
    rather than letting the schedule run past its end.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total // 5, 2 * steps_per_epoch) if cfg.scheduler == "onecycle" else 0

    def multiplier(step: int) -> float:
        if cfg.scheduler == "none":
            return 1.0
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum across workers, so every worker sees the same metrics and takes the same decisions."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def run_epoch(
    model, batches, device, *, optimizer=None, schedule=None, criterion, cfg, channels_last, amp=True
) -> dict[str, float]:
    """One pass over `batches`; trains when an optimizer is given, else evaluates."""
    training = optimizer is not None
    model.train(training)
    loss_sum = correct = seen = 0.0
    started = time.perf_counter()
    with torch.set_grad_enabled(training):
        for batch in batches:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            # bf16 autocast on GPU only: CPUs gain little from it and some lack fast bf16.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits, _ = model(images)
            loss = criterion(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                schedule.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
    elapsed = time.perf_counter() - started
    loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], device)
    # All workers step together (DDP), so one worker's wall time is the epoch's.
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "images": seen, "seconds": elapsed}


def _maybe_fail(config: dict[str, Any], epoch: int, rank: int) -> None:
    """Fault injection for resilience tests: rank 1 (or 0 alone) dies once at the given epoch."""
    fault = config.get("fail_once")
    if not fault or epoch != fault["epoch"] or rank != min(1, config["world_size"] - 1):
        return
    marker = Path(fault["marker"])
    if not marker.exists():
        marker.write_text(f"failed at epoch {epoch}\n")
        raise RuntimeError(f"injected worker failure at epoch {epoch} (fault-injection test)")


def _input(config: dict[str, Any], cfg: TrainSettings, rank: int):
    """`batches(split, epoch)`: this worker's batches, from its Ray Data shard or its own DataLoader."""
    import ray.train

    if cfg.input == "dataloader":
        from .datasets import torch_loader

        spec = cfg.preprocessing.model_dump()
        loaders = {
            split: torch_loader(
                config["rows"][split], config["raw"], spec,
                augment=cfg.augment if split == "train" else None, seed=cfg.seed,
                batch_size=cfg.batch_size if split == "train" else 256,
                rank=rank, world=config["world_size"], workers=cfg.loader_workers, deterministic=cfg.deterministic,
            )
            for split in ("train", "val")
        }  # fmt: skip

        def from_loader(split: str, epoch: int):
            loaders[split].sampler.set_epoch(epoch)
            return loaders[split]

        return from_loader
    if cfg.deterministic:
        return _seeded_ray_data(config, cfg, rank)

    shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val")}

    def from_ray_data(split: str, epoch: int):
        if split == "train":
            return shards[split].iter_torch_batches(
                batch_size=cfg.batch_size, dtypes=DTYPES, local_shuffle_buffer_size=4 * cfg.batch_size
            )
        return shards[split].iter_torch_batches(batch_size=256, dtypes=DTYPES)

    return from_ray_data


def _seeded_ray_data(config: dict[str, Any], cfg: TrainSettings, rank: int):
    """Deterministic Ray Data: per epoch, this worker decodes its sampler rows in order, seeded per image."""
    import ray

    from .datasets import epoch_order, seeded_dataset

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    spec = cfg.preprocessing.model_dump()

    def from_seeded(split: str, epoch: int):
        rows, train = config["rows"][split], split == "train"
        order = epoch_order(len(rows["path"]), epoch=epoch, rank=rank, world=config["world_size"], shuffle=train,
                            seed=cfg.seed)  # fmt: skip
        augment = {"augment": cfg.augment, "seed": cfg.seed} if train else {"augment": None}
        dataset = seeded_dataset(rows, order, epoch, config["raw"], spec, **augment)
        return dataset.iter_torch_batches(batch_size=cfg.batch_size if train else 256, dtypes=DTYPES)

    return from_seeded


def _deterministic_torch() -> None:
    """Deterministic kernels (and the cuBLAS workspace they need on a GPU), no cuDNN autotuning."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def _setup(config: dict[str, Any], cfg: TrainSettings):
    """The model on this worker's device (wrapped for DDP), its optimizer, schedule and loss."""
    import ray.train.torch

    seed_everything(cfg.seed)  # same seed on every rank: identical initial weights before DDP's broadcast
    device = ray.train.torch.get_device()
    model = create_model(cfg.model, config["num_classes"], weights=cfg.weights, dropout=cfg.dropout)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    optimizer = make_optimizer(plain, cfg)
    schedule = make_schedule(optimizer, cfg, config["steps_per_epoch"])
    return device, model, plain, optimizer, schedule


def _resume(plain, optimizer, schedule, device, cfg: TrainSettings) -> tuple[int, float, int]:
    """(first epoch, best val accuracy, epochs without improvement) after the last checkpoint, if there is one."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, -1.0, 0
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
    plain.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return state["epoch"] + 1, state["best"], state["stale"]


def _report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Every epoch is reported with a checkpoint (Ray keeps the best k by val_accuracy), so a failure
    costs at most the epoch in flight. Only rank 0 writes one: the weights are identical on every rank."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if state is not None:
            torch.save(state, os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    cfg = TrainSettings.model_validate(config["train"])
    if cfg.deterministic:
        _deterministic_torch()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    config["world_size"] = context.get_world_size()
    device, model, plain, optimizer, schedule = _setup(config, cfg)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    start_epoch, best, stale = _resume(plain, optimizer, schedule, device, cfg)
    batches = _input(config, cfg, rank)
    common = {"device": device, "criterion": criterion, "cfg": cfg, "channels_last": device.type == "cuda"}
    for epoch in range(start_epoch, cfg.epochs):
        _maybe_fail(config, epoch, rank)
        # Dropout's draws: their own per rank and epoch, so a resumed run continues as an unbroken one would.
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, epoch]).generate_state(1)[0]))
        train = run_epoch(model, batches("train", epoch), optimizer=optimizer, schedule=schedule, **common)
        val = run_epoch(model, batches("val", epoch), **common)
        improved = val["accuracy"] > best
        best, stale = (val["accuracy"], 0) if improved else (best, stale + 1)
        metrics = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "best_val_accuracy": best,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_second": train["images"] / max(train["seconds"], 1e-9),
            "stop": stale >= cfg.early_stopping_patience,
        }
        state = None
        if rank == 0:
            state = {
                "model": plain.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
            }
            state.update(epoch=epoch, best=best, stale=stale)
        _report(metrics, state)
        if metrics["stop"]:
            break
