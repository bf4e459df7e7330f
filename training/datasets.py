"""Ray Data pipelines from the prepared manifest: decode and augment on CPU, stream to workers.

Images are decoded and augmented in `map_batches` tasks, which Ray schedules on any node
with CPUs, so preprocessing scales apart from the (GPU) training workers. Training batches
get the albumentations pipeline; validation batches get exactly the evaluation transform.
Image paths must be readable from every node (a shared or object-store-backed folder on a
cluster; the local disk on one machine).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.transforms import (
    PreprocessingSpec,
    build_augmentation,
    decode,
    eval_transform,
    image_stats,
    to_rgb,
    train_transform,
)


class DecodeBatch:
    """A callable class for `map_batches`: built once per task/actor, applied to each batch."""

    def __init__(self, raw: str, spec: dict[str, Any], augment: list | None, seed: int | None = None):
        self.raw = Path(raw)
        self.spec = PreprocessingSpec.model_validate(spec)
        if augment is not None:
            import albumentations as A

            pipeline = build_augmentation(augment)
            if seed is not None:
                pipeline = A.Compose(pipeline.transforms, seed=seed)
            self.transform = train_transform(self.spec, pipeline)
        else:
            to_tensor = eval_transform(self.spec)
            self.transform = lambda image: to_tensor(image).numpy()

    def image(self, path: str) -> np.ndarray:
        return self.transform(decode((self.raw / path).read_bytes()))

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        images = [self.image(p) for p in batch["path"]]
        return {"image": np.stack(images).astype(np.float32), "label": batch["label_index"].to_numpy(np.int64)}


def split_frame(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    return manifest.loc[manifest["split"] == split, ["path", "label_index"]].reset_index(drop=True)


def make_dataset(
    frame: pd.DataFrame,
    raw: Path,
    spec: PreprocessingSpec,
    *,
    augment: list | None,
    seed: int | None = None,
    batch_size: int = 64,
):
    """A Ray Dataset of {"image": float32 NCHW, "label": int64} from manifest rows."""
    import ray

    # The driver shows its own progress; Ray Data's per-dataset bars would only interleave with it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if augment is not None:
        # The manifest is sorted by path, i.e. by class: shuffle the (cheap) table of paths
        # once with the seed; block order is re-drawn every epoch below and the workers add
        # a local shuffle buffer, so no batch is ever a run of one class.
        frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    # Small blocks let decoding start streaming before the whole split is read.
    with warnings.catch_warnings():  # pandas' swapaxes deprecation, raised inside Ray's splitting
        warnings.simplefilter("ignore", FutureWarning)
        ds = ray.data.from_pandas(frame, override_num_blocks=max(1, min(64, len(frame) // 128)))
    if augment is not None:
        ds = ds.randomize_block_order()
    # Stateless tasks rather than an actor pool: building the transform per batch costs
    # microseconds, while an actor pool is started afresh for every epoch's pass.
    return ds.map_batches(
        _decode_batch,
        fn_kwargs={"raw": str(raw), "spec": spec.model_dump(), "augment": augment},
        batch_format="pandas",
        batch_size=batch_size,
        num_cpus=0.25,  # fractional: leaves room beside the training workers on a small machine
    )


def _decode_batch(
    batch: pd.DataFrame, *, raw: str, spec: dict[str, Any], augment: list | None
) -> dict[str, np.ndarray]:
    return DecodeBatch(raw, spec, augment)(batch)


def stats_of(frame: pd.DataFrame, raw: Path) -> pd.DataFrame:
    """The production log's image stats (width, height, brightness, contrast) of manifest rows."""
    rows = [image_stats(to_rgb(decode((Path(raw) / path).read_bytes()))) for path in frame["path"]]
    return pd.DataFrame(rows, columns=["width", "height", "brightness", "contrast"])


def load_images(frame: pd.DataFrame, raw: Path, spec: PreprocessingSpec) -> np.ndarray:
    """The evaluation transform over manifest rows, in process (for evaluation and the baseline)."""
    decoder = DecodeBatch(str(raw), spec.model_dump(), None)
    return np.stack([decoder.image(p) for p in frame["path"]]).astype(np.float32)


# --- the alternative input path: a plain torch DataLoader inside each worker ------------------


class ManifestImages:
    """A map-style torch dataset over manifest rows, decoding in the training process (or its loader workers)."""

    def __init__(self, rows: dict[str, list], raw: str, spec: dict[str, Any], augment: list | None, seed: int | None):
        self.paths, self.labels = rows["path"], rows["label_index"]
        self.args = (raw, spec, augment, seed)
        self.decoder: DecodeBatch | None = None  # built lazily: once per loader process

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.decoder is None:
            self.decoder = DecodeBatch(*self.args)
        return {"image": self.decoder.image(self.paths[i]).astype(np.float32), "label": int(self.labels[i])}


def torch_loader(
    rows: dict[str, list],
    raw: str,
    spec: dict[str, Any],
    *,
    augment: list | None,
    seed: int,
    batch_size: int,
    rank: int,
    world: int,
    workers: int,
):
    """A DataLoader over this worker's share of the rows (DistributedSampler, reshuffled per epoch)."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    dataset = ManifestImages(rows, raw, spec, augment, seed)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=augment is not None, seed=seed)
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def frame_rows(frame: pd.DataFrame) -> dict[str, list]:
    return {"path": frame["path"].tolist(), "label_index": frame["label_index"].astype(int).tolist()}
