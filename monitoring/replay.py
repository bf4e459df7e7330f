"""Replay labelled images through a registered version into a production log, without a server.

Useful to backfill a log, to check a candidate dataset for drift before it reaches production,
and for tests and walkthroughs. Each image goes through the same steps as in serving
(`to_rgb`, `image_stats`, the version's `eval_transform`, the exported network), and each answer
is appended in the production-log format; `serving` is not needed and not imported.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lensops.core.production_log import ProductionLogWriter
from lensops.core.registry import Registry
from lensops.core.settings import Settings


def replay(
    settings: Settings,
    images: Sequence[Path],
    log_dir: Path | None = None,
    *,
    model: str | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Answer `images` with the version `model` points at (default @champion) and log them.

    Returns one row per image: path, label (its folder's name), predicted, score, version.
    """
    import torch

    from data.transforms import decode, eval_transform, image_stats, to_rgb

    with Registry.of(settings).open(model) as version:
        network, transform, classes = version.network(), eval_transform(version.spec), version.classes
    log_dir = settings.path(log_dir or settings.monitoring.log_dir)
    rows = []
    with ProductionLogWriter(log_dir, flush_seconds=settings.monitoring.flush_seconds) as log:
        for start in range(0, len(images), batch_size):
            chunk = [Path(p) for p in images[start : start + batch_size]]
            upright = [to_rgb(decode(p.read_bytes())) for p in chunk]  # converted once: stats and tensor share it
            with torch.no_grad():
                logits, embeddings = network(torch.stack([transform.from_rgb(image) for image in upright]))
            probabilities = torch.softmax(logits, dim=1).numpy()
            for path, image, p, embedding in zip(chunk, upright, probabilities, embeddings.numpy(), strict=True):
                predicted = classes[int(p.argmax())]
                log.append(
                    {
                        "time": pd.Timestamp.now(tz="UTC"),
                        "request_id": uuid.uuid4().hex,
                        "model_name": version.name,
                        "model_version": version.version,
                        "embedding": embedding,
                        "label": predicted,
                        "score": float(p.max()),
                        **image_stats(image),
                    }
                )
                rows.append(
                    {
                        "path": str(path),
                        "label": path.parent.name,
                        "predicted": predicted,
                        "score": float(p.max()),
                        "version": version.version,
                    }
                )
    return pd.DataFrame(rows, columns=["path", "label", "predicted", "score", "version"])
