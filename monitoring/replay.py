"""Replay images through a registered version into the production log, without a server.

Useful to backfill a log, to check a candidate dataset for drift before it reaches production,
and for tests and walkthroughs. Each image goes through the same steps as in serving: the shared
decoder, `to_rgb` once, `image_stats`, the version's `eval_transform`, the exported network, the
novelty of its embedding against the version's training data, and `lensops.core.capture.AnswerLog`,
which appends the production-log record and keeps the image in the capture store when the
capture policy picks it. `serving` is not needed and not imported.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lensops.core.capture import AnswerLog, sha256_of
from lensops.core.registry import Registry
from lensops.core.settings import Settings

COLUMNS = ["path", "label", "predicted", "score", "version", "request_id", "sha256", "captured", "novelty"]


def replay(
    settings: Settings,
    images: Sequence[Path],
    log_dir: Path | None = None,
    *,
    model: str | None = None,
    batch_size: int = 256,
    capture_seed: int | None = 0,
) -> pd.DataFrame:
    """Answer `images` with the version `model` points at (default @champion) and log them.

    Returns one row per image: path, label (its folder's name), predicted, score, version, request
    id, sha256, whether the capture policy kept it (and why), and its novelty.
    """
    from data.novelty import NoveltyReference, outside, stat_ranges

    with Registry.of(settings).open(model) as version:
        network, spec, classes, baseline = version.network(), version.spec, version.classes, version.baseline()
        name, number = version.name, version.version
    drift = settings.drift
    reference = NoveltyReference.from_settings(baseline, drift)
    ranges = stat_ranges(baseline)
    if log_dir is not None:
        settings = settings.updated({"monitoring.log_dir": str(log_dir)})
    rows = []
    with AnswerLog(settings.monitoring, settings.root, seed=capture_seed, wait=True) as answers:
        for start in range(0, len(images), batch_size):
            chunk = [Path(p) for p in images[start : start + batch_size]]
            for row in _answer(chunk, network, spec, classes, reference):
                record = {"request_id": row["request_id"], "model_name": name, "model_version": number, **row["log"]}
                reason = answers.record(
                    row["bytes"], record, novelty=row["novelty"], stat_outlier=outside(row["stats"], ranges)
                )
                rows.append({**row["row"], "version": number, "captured": reason, "novelty": row["novelty"]})
    return pd.DataFrame(rows, columns=COLUMNS)


def _answer(chunk: list[Path], network, spec, classes: list[str], reference):
    """The network's answers for a chunk of image files, as serving would give them."""
    import torch

    from data.transforms import decode, eval_transform, image_stats, to_rgb

    transform = eval_transform(spec)
    bodies = [p.read_bytes() for p in chunk]
    upright = [to_rgb(decode(body)) for body in bodies]  # converted once: stats and tensor share it
    with torch.no_grad():
        logits, embeddings = network(torch.stack([transform.from_rgb(image) for image in upright]))
    probabilities, embeddings = torch.softmax(logits, dim=1).numpy(), embeddings.numpy()
    novelty = reference.novelty(embeddings)
    for path, body, image, p, embedding, new in zip(
        chunk, bodies, upright, probabilities, embeddings, novelty, strict=True
    ):
        request_id, stats, sha256 = uuid.uuid4().hex, image_stats(image), sha256_of(body)
        predicted, score = classes[int(p.argmax())], float(p.max())
        yield {
            "request_id": request_id,
            "bytes": body,
            "stats": stats,
            "novelty": float(new),
            "log": {
                "time": pd.Timestamp.now(tz="UTC"),
                "embedding": embedding,
                "label": predicted,
                "score": score,
                "sha256": sha256,
                **stats,
            },
            "row": {
                "path": str(path),
                "label": path.parent.name,
                "predicted": predicted,
                "score": score,
                "request_id": request_id,
                "sha256": sha256,
            },
        }
