"""The shadow: a second version run on answered images, after the answer, never in it.

`serve.shadow` names a version or alias (`challenger`, say); its `Model` deployment follows it
as the champion's follows `@champion`. Once the champion has answered a batch, the ingress hands
the shadow the same preprocessed tensor (`serve.shadow_fraction` of its images, drawn at
random) in a task of its own: the answers have already been returned when the shadow runs, and
nothing it does (an error, a slow forward, a version that will not load) reaches a client. A
shadow whose preprocessing spec differs from the champion's gets the uploads preprocessed again
with its own.

Each shadowed image gives one record in `monitoring.shadow_log_dir`, in the production log's
format, with the `request_id` of the champion's record: `lensops review --live` joins the two.
The shadow's images are gathered for up to `WINDOW_S` (or `MAX_BATCH` of them) and sent in one
call, so that under light traffic it pays one hop per few requests rather than one per request.
At most `MAX_PENDING` shadow batches run at once; past that, images are skipped (and counted),
so a slow shadow never builds a backlog. `/metrics` counts shadowed images by outcome
(`answered`, `failed`, `skipped`) and times the shadow's forwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("lensops.serving")
MAX_PENDING = 16  # shadow batches in flight; more are skipped
MAX_BATCH = 64  # images per call to the shadow
WINDOW_S = 0.25  # how long the first image of a shadow batch waits for others


class Shadow:
    def __init__(
        self,
        model,
        preprocess: Callable[[list[bytes], dict[str, Any]], Awaitable[list[dict[str, Any]]]],
        *,
        fraction: float,
        log_dir: Path,
        monitoring,
        metrics,
        stats: tuple[str, ...],
        seed: int | None = None,
    ):
        from prometheus_client import Counter, Histogram

        from lensops.core.production_log import ProductionLogWriter

        self.model, self.preprocess, self.fraction, self.stats = model, preprocess, fraction, stats
        self.log = ProductionLogWriter(
            log_dir, flush_seconds=monitoring.flush_seconds, flush_records=monitoring.flush_records
        )
        self.random = random.Random(seed)
        self.pending: set[asyncio.Task] = set()
        self.queue: list[tuple[np.ndarray, str, dict[str, Any]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self._info: dict[str, Any] | None = None
        self.images = Counter("lensops_shadow_images", "images sent to the shadow", ["outcome"], registry=metrics)
        self.seconds = Histogram("lensops_shadow_seconds", "shadow forward per batch", registry=metrics)

    def submit(self, tensors: np.ndarray, key: str, images: list[tuple[dict[str, str], bytes, dict[str, Any]]]) -> None:
        """Schedule the shadow on a batch the champion has answered, and return at once. `images` are, in the
        tensor's order, each image's request id and sha256, its body, and its preprocessed item."""
        for i in range(len(images)):
            if self.fraction >= 1 or self.random.random() < self.fraction:
                meta, body, item = images[i]
                row = {**meta, "body": body, "stats": {stat: item[stat] for stat in self.stats}}
                self.queue.append((tensors[i], key, row))
        if len(self.queue) >= MAX_BATCH:
            self._flush()
        elif self.queue and self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(WINDOW_S, self._flush)

    def _flush(self) -> None:
        """The queued images to the shadow, one call per preprocessing spec (normally one)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        queued, self.queue = self.queue, []
        for key in dict.fromkeys(k for _, k, _ in queued):
            group = [(tensor, row) for tensor, k, row in queued if k == key]
            if len(self.pending) >= MAX_PENDING:
                self.images.labels("skipped").inc(len(group))
                continue
            tensors = np.stack([tensor for tensor, _ in group])
            task = asyncio.get_running_loop().create_task(self._run(tensors, key, [row for _, row in group]))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _run(self, tensors: np.ndarray, key: str, rows: list[dict[str, Any]]) -> None:
        started = time.perf_counter()
        try:
            result = await self.model.predict.remote((tensors, key))
            if result.get("stale"):  # another preprocessing spec: the uploads again, with the shadow's
                rows, result = await self._own_spec(rows)
            for i, row in enumerate(rows):
                self.log.append(self._record(row, result, i))
            self.images.labels("answered").inc(len(rows))
        except Exception as e:  # the shadow never affects serving: counted and logged, no more
            self.images.labels("failed").inc(len(rows))
            log.warning("shadow failed on %d image(s): %s: %s", len(rows), type(e).__name__, str(e)[:300])
        finally:
            self.seconds.observe(time.perf_counter() - started)

    async def _own_spec(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        info = await self.model.info.remote()
        items = await self.preprocess([row["body"] for row in rows], info["preprocessing"])
        kept = [(row, item) for row, item in zip(rows, items, strict=True) if "error" not in item]
        if not kept:
            raise ValueError("no image decodes under the shadow's preprocessing")
        tensors = np.stack([item["tensor"] for _, item in kept])
        result = await self.model.predict.remote((tensors, kept[0][1]["key"]))
        if result.get("stale"):
            raise RuntimeError("the shadow's version changed during the batch")
        return [row for row, _ in kept], result

    @staticmethod
    def _record(row: dict[str, Any], result: dict[str, Any], i: int) -> dict[str, Any]:
        probabilities = result["probabilities"][i]
        top = int(np.argmax(probabilities))
        return {
            "request_id": row["request_id"],
            "model_name": result.get("name", ""),
            "model_version": result["version"],
            "embedding": result["embedding"][i],
            "label": result["classes"][top],
            "score": float(probabilities[top]),
            "sha256": row["sha256"],
            "captured": False,
            **row["stats"],
        }

    def close(self) -> None:
        self.log.close()
