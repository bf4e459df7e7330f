"""Ray Data pipelines from the prepared manifest: decode and augment on CPU, stream to workers.

Images are decoded and augmented in `map_batches` tasks, which Ray schedules on any node
with CPUs, so preprocessing scales apart from the (GPU) training workers. Training batches
get the albumentations pipeline; validation batches get exactly the evaluation transform.
Image paths must be readable from every node (a shared or object-store-backed folder on a
cluster; the local disk on one machine).

Randomness (see the README's "What is deterministic"): with `train.deterministic` every training
image's augmentation is drawn from its own seed, `(train.seed, epoch, index)`, and each worker's
order is `DistributedSampler`'s, on either input path, so a run depends on nothing but its seed
and the number of workers. Without it, the DataLoader path seeds one stream per rank and loader
process, and the Ray Data path draws fresh entropy per batch.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.images import ImageRejected
from data.transforms import (
    PreprocessingSpec,
    build_augmentation,
    decode,
    eval_transform,
    image_stats,
    to_rgb,
    train_transform,
)


class CorruptImage(RuntimeError):
    """A training image that no longer decodes: named, so that the data can be mended."""


class DecodeBatch:
    """A callable class for `map_batches`: built once per task/actor, applied to each batch.

    `seed` seeds the augmentation stream; rows that carry `epoch` and `index` columns (the
    deterministic path) each get the stream of their own seed instead.
    """

    def __init__(self, raw: str, spec: dict[str, Any], augment: list | None, seed: int | None = None):
        self.raw = Path(raw)
        self.spec = PreprocessingSpec.model_validate(spec)
        self.seed, self.pipeline = seed, None
        if augment is not None:
            self.pipeline = build_augmentation(augment)
            if seed is not None:
                self.pipeline.set_random_seed(seed)
            self.transform = train_transform(self.spec, self.pipeline)
        else:
            to_tensor = eval_transform(self.spec)
            self.transform = lambda image: to_tensor(image).numpy()

    def image(self, path: str, sample: tuple[int, int] | None = None) -> np.ndarray:
        """One image through the transform; `sample` = (epoch, index) draws its augmentation from its own seed."""
        if sample is not None and self.pipeline is not None and self.seed is not None:
            key = [self.seed, *sample]
            self.pipeline.set_random_state(np.random.default_rng(key), random.Random(repr(key)))
        file = self.raw / path
        try:
            image = decode(file.read_bytes())
        except ImageRejected as e:
            raise CorruptImage(f"{file}: no longer decodes ({e}); restore it or run `lensops data prepare`") from None
        return self.transform(image)

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        if "index" in batch:
            samples = zip(batch["epoch"].astype(int), batch["index"].astype(int), strict=True)
            images = [self.image(p, s) for p, s in zip(batch["path"], samples, strict=True)]
        else:
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
    batch: pd.DataFrame, *, raw: str, spec: dict[str, Any], augment: list | None, seed: int | None = None
) -> dict[str, np.ndarray]:
    return DecodeBatch(raw, spec, augment, seed)(batch)


def epoch_order(n: int, *, epoch: int, rank: int, world: int, shuffle: bool, seed: int) -> list[int]:
    """This worker's rows of an epoch, in order: `DistributedSampler`'s, whichever input path reads them."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    sampler.set_epoch(epoch)
    return list(sampler)


def seeded_dataset(rows: dict[str, list], order: list[int], epoch: int, raw: str, spec: dict[str, Any], **kw: Any):
    """One worker's epoch as a Ray Dataset in `order`, each image augmented from its own seed (`kw`: augment, seed).

    Built by the worker for each epoch, so the epoch is known to every decoding task; the caller
    sets `preserve_order` so batches arrive in `order` as a DataLoader would give them.
    """
    import ray

    frame = pd.DataFrame(
        {
            "path": [rows["path"][i] for i in order],
            "label_index": [rows["label_index"][i] for i in order],
            "index": order,
            "epoch": epoch,
        }
    )
    blocks = max(1, min(64, len(frame) // 128))
    return ray.data.from_pandas(frame, override_num_blocks=blocks).map_batches(
        _decode_batch, fn_kwargs={"raw": raw, "spec": spec, **kw}, batch_format="pandas", num_cpus=0.25
    )


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
    """A map-style torch dataset over manifest rows, decoding in the training process (or its loader workers).

    Keys are (index, epoch) pairs from `EpochSampler`. With `per_sample`, each image's augmentation
    comes from (seed, epoch, index); without, each loader process has its own stream, seeded from
    (seed, rank, loader process).
    """

    def __init__(self, rows, raw: str, spec: dict[str, Any], augment: list | None, seed: int, *, rank: int = 0,
                 per_sample: bool = False):  # fmt: skip
        self.paths, self.labels = rows["path"], rows["label_index"]
        self.args, self.seed, self.rank, self.per_sample = (raw, spec, augment), seed, rank, per_sample
        self.decoder: DecodeBatch | None = None  # built lazily: once per loader process

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        if self.decoder is None:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
            stream = np.random.SeedSequence([self.seed, self.rank, info.id + 1 if info else 0]).generate_state(1)[0]
            self.decoder = DecodeBatch(*self.args, seed=self.seed if self.per_sample else int(stream))
        sample = (epoch, i) if self.per_sample else None
        return {"image": self.decoder.image(self.paths[i], sample).astype(np.float32), "label": int(self.labels[i])}


def _epoch_sampler():
    from torch.utils.data import DistributedSampler

    class EpochSampler(DistributedSampler):
        """`DistributedSampler`'s order, each index paired with the epoch (for per-image seeds)."""

        def __iter__(self):
            return ((i, self.epoch) for i in super().__iter__())

    return EpochSampler


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
    deterministic: bool = False,
):
    """A DataLoader over this worker's share of the rows (reshuffled per epoch: call `sampler.set_epoch`)."""
    import torch
    from torch.utils.data import DataLoader

    dataset = ManifestImages(rows, raw, spec, augment, seed, rank=rank, per_sample=deterministic)
    sampler = _epoch_sampler()(dataset, num_replicas=world, rank=rank, shuffle=augment is not None, seed=seed)
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Its own generator: each iterator draws a seed, which must not move torch's global RNG (dropout's).
        generator=torch.Generator().manual_seed(seed),
    )


def frame_rows(frame: pd.DataFrame) -> dict[str, list]:
    return {"path": frame["path"].tolist(), "label_index": frame["label_index"].astype(int).tolist()}
