"""Training throughput: `lensops train` (Ray Train DDP + Ray Data) against a plain PyTorch loop.

All rows train the same model with the same optimizer, schedule, augmentation, global batch and
epochs on the same image files, on this machine, in one run:

  compute only     the plain loop on one in-memory batch repeated: no decoding at all (the ceiling)
  plain            one process: torch DataLoader (decode + augment) feeding the same step code
  plain+tracking   the same with lensops' MLflow tracking on (run, params, per-epoch async metrics)
  lensops          `train()`: Ray Train workers fed by Ray Data (`train.input=ray_data`)
  lensops+loader   `train()` with a torch DataLoader inside each worker (`train.input=dataloader`)
  lensops default  `train()` as `lensops train` runs with no settings (`train.input=auto`: the path it picks
                   for the cluster Ray sees is printed)

Images/s is the median over the epochs after the first (warm-up: process and pipeline start),
training pass only, as the training loop itself reports it. Ratios are against `plain`.
The data stall is compute-only images/s over real-data images/s.

    python benchmarks/train_throughput.py                        # the digits at 32 px, smallcnn
    python benchmarks/train_throughput.py --dataset jpeg --images 4096 --size 224 --model resnet50 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def build_project(root: Path, args) -> Path:
    from data.digits import write_digits
    from data.prepare import prepare_dataset
    from lensops.core.settings import load_settings

    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    if args.dataset == "digits":
        write_digits(root / "data" / "raw", size=args.size)
    else:
        from validate_throughput import make_images

        make_images(root / "data" / "raw", args.images, args.size, "JPEG")
    prepare_dataset(load_settings(root / "params.yaml"), progress=False)
    return root


def overrides(args) -> list[str]:
    return [
        f"train.model={args.model}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        f"train.num_workers={args.workers}",
        f"train.preprocessing.size={args.size}",
        f"train.early_stopping_patience={args.epochs + 1}",
        f"train.use_gpu={'auto' if torch.cuda.is_available() else 'false'}",
        "registry.model_name=bench",
        "registry.experiment=bench",
    ]


def plain_loop(settings, *, tracking: bool, synthetic: bool, amp: bool = True, loader_workers: int = 1) -> list[float]:
    """One process, no Ray: the per-epoch images/s of the training pass."""
    from lensops.core.registry import Registry
    from training.datasets import frame_rows, torch_loader
    from training.loop import make_optimizer, make_schedule, run_epoch, seed_everything
    from training.models import create_model
    from training.train import load_training_data

    cfg = settings.train
    registry = Registry.of(settings)
    data = load_training_data(settings)
    seed_everything(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels_last = device.type == "cuda" and amp
    model = create_model(cfg.model, len(data.classes), dropout=cfg.dropout).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch = cfg.batch_size * cfg.num_workers  # the same global batch as the DDP run
    loader = torch_loader(
        frame_rows(data.train), str(data.raw), cfg.preprocessing.model_dump(),
        augment=cfg.augment, seed=cfg.seed, batch_size=batch, rank=0, world=1, workers=loader_workers,
    )  # fmt: skip
    steps = len(loader)
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if synthetic:
        first = next(iter(loader))
        fixed = {"image": first["image"].to(device), "label": first["label"].to(device)}
    run_id = None
    if tracking:  # what lensops' training run records, through the same client calls
        from mlflow.entities import RunTag

        from lensops.core import tags
        from training.lineage import params_hash
        from training.tracking import as_params

        client = registry.client()
        experiment = registry.experiment_id(settings.registry.experiment)
        run_id = client.create_run(experiment, run_name="bench-plain-tracking").info.run_id
        client.log_batch(
            run_id,
            params=as_params(settings.model_dump(mode="json", by_alias=True)),
            tags=[RunTag(tags.PARAMS_HASH, params_hash(settings))],
        )
    rates = []
    for epoch in range(cfg.epochs):
        if synthetic:
            batches = (fixed for _ in range(steps))
        else:
            loader.sampler.set_epoch(epoch)
            batches = loader
        result = run_epoch(
            model, batches, device, optimizer=optimizer, schedule=schedule, criterion=criterion, cfg=cfg,
            channels_last=channels_last, amp=amp,
        )  # fmt: skip
        rates.append(result["images"] / result["seconds"])
        if run_id:
            registry.log_epoch(run_id, {"epoch": epoch, "train_loss": result["loss"], "images_per_second": rates[-1]})
    if run_id:
        import mlflow

        mlflow.flush_async_logging()
        registry.client().set_terminated(run_id)
    return rates


def lensops_run(settings) -> tuple[list[float], float]:
    from training.train import train

    started = time.perf_counter()
    result = train(settings, progress=False)
    return list(result.history.images_per_second), time.perf_counter() - started


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "jpeg"], default="digits")
    parser.add_argument("--images", type=int, default=4096, help="with --dataset jpeg")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per Ray Train worker")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--loader-workers", type=int, default=1, help="DataLoader processes of the plain loop")
    parser.add_argument(
        "--rows", default="compute,plain,tracking,lensops,loader,default", help="comma-separated subset"
    )
    args = parser.parse_args()
    rows = set(args.rows.split(","))

    from lensops.core.settings import load_settings

    scratch = Path(tempfile.mkdtemp(prefix="lensops-bench-"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        root = build_project(scratch, args)
        settings = load_settings(root / "params.yaml", overrides(args))
        manifest = pd.read_parquet(root / "data" / "prepared" / "manifest.parquet")
        n = int((manifest.split == "train").sum())
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
        batch = args.batch_size * args.workers
        print(f"{n} training images, {args.size}px, {args.model}, {args.epochs} epochs, global batch {batch}, ", end="")
        print(f"{os.cpu_count()} CPUs, GPU: {gpu}")
        results: dict[str, float] = {}
        wall: dict[str, float] = {}
        if "compute" in rows:
            results["compute only"] = steady(
                plain_loop(settings, tracking=False, synthetic=True, loader_workers=args.loader_workers)
            )
        if "plain" in rows:
            started = time.perf_counter()
            results["plain"] = steady(
                plain_loop(settings, tracking=False, synthetic=False, loader_workers=args.loader_workers)
            )
            wall["plain"] = time.perf_counter() - started
        if "tracking" in rows:
            started = time.perf_counter()
            results["plain+tracking"] = steady(
                plain_loop(settings, tracking=True, synthetic=False, loader_workers=args.loader_workers)
            )
            wall["plain+tracking"] = time.perf_counter() - started
        if torch.cuda.is_available() and "compute" in rows:
            results["compute only, fp32"] = steady(plain_loop(settings, tracking=False, synthetic=True, amp=False))
        if "lensops" in rows:
            rates, wall["lensops"] = lensops_run(settings.updated({"train.input": "ray_data"}))
            results["lensops"] = steady(rates)
        if "loader" in rows:
            rates, wall["lensops+loader"] = lensops_run(
                settings.updated({"train.input": "dataloader", "train.loader_workers": 0})
            )
            results["lensops+loader"] = steady(rates)
        if "default" in rows:
            from training.trainer import choose_input

            auto = settings.updated({"train.input": "auto"})
            rates, wall["lensops default"] = lensops_run(auto)
            results["lensops default"] = steady(rates)
            print("the default input path here:", *choose_input(auto))

        base = results.get("plain")
        print(f"\n{'row':<22}{'images/s':>10}{'vs plain':>10}{'wall s':>9}")
        for name, rate in results.items():
            ratio = f"{rate / base:.2f}" if base else ""
            print(f"{name:<22}{rate:>10.0f}{ratio:>10}{wall.get(name, float('nan')):>9.1f}")
        if base and "plain+tracking" in results:
            overhead = 100 * (1 - results["plain+tracking"] / base)
            print(f"\ntracking overhead: {overhead:+.1f}% of training images/s (aim: under 3%)")
        if base and "lensops" in results:
            print(f"lensops / plain: {results['lensops'] / base:.2f} (aim: at least 0.9)")
        if "lensops" in results and "lensops+loader" in results:
            print(f"Ray Data / per-worker DataLoader: {results['lensops'] / results['lensops+loader']:.2f}")
        if "compute only" in results and base:
            print(f"data stall (compute-only / plain): {results['compute only'] / base:.2f}")
        if "compute only, fp32" in results:
            speedup = results["compute only"] / results["compute only, fp32"]
            print(f"AMP+channels_last / fp32 (compute only): {speedup:.2f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
