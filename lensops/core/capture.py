"""The capture store: the uploaded bytes of a sample of production images, content-addressed.

One file per image, exactly the bytes received, at `<folder>/<sha256[:2]>/<sha256>`, written
under a temporary name, fsynced and renamed, so a file that exists is whole. Its modification
time is when it was last seen (a second capture of the same bytes only touches it). The store
keeps under a byte budget by evicting the least recently seen files first, and forgets files
not seen for the retention period.

Which images are kept is the `CapturePolicy`'s decision (`monitoring.capture` in params.yaml):
every image whose top score is below `low_score_below`, every outlier (its embedding far from
what the version was trained on, or an image statistic outside the training range), and a random
`sample_rate` of the rest. `CaptureWriter` does the writing off the answer's path: a bounded
queue and one thread that puts the bytes on disk and only then appends the production-log
record that points to them. A full queue, a full disk or any write error never delays or fails
an answer: the record is logged with `captured: false` and the failure counted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .production_log import fsync_folder

log = logging.getLogger("lensops.capture")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CaptureStore:
    """Content-addressed files under a byte budget and a retention period."""

    def __init__(self, folder: Path | str, *, max_bytes: int, retention_days: float | None = None):
        self.folder, self.max_bytes, self.retention_days = Path(folder), max_bytes, retention_days
        self._used: int | None = None
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.folder / sha256[:2] / sha256

    def get(self, sha256: str) -> Path | None:
        path = self.path(sha256)
        return path if path.is_file() else None

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Keep `data`; returns its sha256. The file is whole and durable when this returns."""
        sha256 = sha256 or sha256_of(data)
        target = self.path(sha256)
        if target.is_file():
            os.utime(target)  # seen again: the newest to evict
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{sha256}.{threading.get_ident()}.tmp")
        try:
            with open(temporary, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        fsync_folder(target.parent)
        with self._lock:
            self._used = None if self._used is None else self._used + len(data)
            over = self._used is None or self._used > self.max_bytes
        if over:
            self.evict()
        return sha256

    def files(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last seen) of every kept image, oldest first."""
        found = []
        for path in self.folder.glob("??/*") if self.folder.is_dir() else []:
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted meanwhile by another process
                continue
            found.append((path, st.st_size, st.st_mtime))
        return sorted(found, key=lambda f: f[2])

    def evict(self) -> int:
        """Remove files past the retention period, then the oldest until under budget; returns files removed."""
        removed, files = 0, self.files()
        horizon = time.time() - self.retention_days * 86400 if self.retention_days is not None else None
        used = sum(size for _, size, _ in files)
        for path, size, seen in files:
            if (horizon is None or seen >= horizon) and used <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            used, removed = used - size, removed + 1
        with self._lock:
            self._used = used
        return removed

    def usage(self) -> int:
        return sum(size for _, size, _ in self.files())


@dataclass
class CapturePolicy:
    """Which images to keep: low scores and outliers always, a random sample of the rest."""

    enabled: bool = True
    sample_rate: float = 0.1
    low_score_below: float | None = 0.6
    outliers: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    @classmethod
    def from_settings(cls, cfg) -> CapturePolicy:
        return cls(cfg.enabled, cfg.sample_rate, cfg.low_score_below, cfg.outliers)

    def reason(self, *, score: float, novelty: float | None = None, stat_outlier: bool = False) -> str | None:
        """Why to keep this image ("low_score", "outlier", "sample"), or None."""
        if not self.enabled:
            return None
        if self.low_score_below is not None and score < self.low_score_below:
            return "low_score"
        if self.outliers and ((novelty is not None and novelty > 1.0) or stat_outlier):
            return "outlier"
        return "sample" if self._random.random() < self.sample_rate else None


class CaptureWriter:
    """Puts chosen images into the store off the request path, then appends their log record.

    `append` is the production log's `append`: a record pointing at an image is appended only
    after the image is on disk. Counters: `captured`, `failed`, `skipped_busy`.
    """

    def __init__(
        self, store: CaptureStore, append: Callable[[Mapping[str, Any]], None], *, max_queue: int = 256, wait=False
    ):
        self.store, self.append, self.wait = store, append, wait  # wait: a batch job, where nothing is in a hurry
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.captured = self.failed = self.skipped_busy = 0
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def submit(self, data: bytes, record: Mapping[str, Any]) -> None:
        """Capture `data` and log `record` (which carries the sha256); never blocks, never raises."""
        try:
            self._queue.put((data, dict(record)), block=self.wait)
        except queue.Full:
            self.skipped_busy += 1
            self.append({**record, "captured": False})

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, record = item
            try:
                self.store.put(data, record.get("sha256"))
                record["captured"] = True
                self.captured += 1
            except Exception as e:  # a full disk, a permission error: the answer went out; say so and go on
                self.failed += 1
                record["captured"] = False
                log.error("capture: could not keep %s in %s: %s", record.get("sha256"), self.store.folder, e)
            try:
                self.append(record)
            except Exception as e:  # the log is closed or broken; the writer thread must survive it
                log.error("capture: could not log %s: %s", record.get("request_id"), e)

    def close(self, timeout: float = 10) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)


class AnswerLog:
    """Where every answer goes: the production log, and for the images the policy picks, the capture store first.

    Serving and `monitoring.replay` both write through it, so a replayed record is indistinguishable
    from a served one. `record` never raises for a capture problem and never waits on the disk.
    """

    def __init__(self, monitoring, root: Path, *, seed: int | None = None, wait: bool = False):
        from .production_log import ProductionLogWriter

        self.log = ProductionLogWriter(
            root / monitoring.log_dir, flush_seconds=monitoring.flush_seconds, flush_records=monitoring.flush_records
        )
        cfg = monitoring.capture
        self.policy = CapturePolicy(cfg.enabled, cfg.sample_rate, cfg.low_score_below, cfg.outliers, seed)
        store = CaptureStore(root / cfg.dir, max_bytes=cfg.max_bytes, retention_days=cfg.retention_days)
        self.capture = CaptureWriter(store, self.log.append, wait=wait) if cfg.enabled else None

    def record(self, data: bytes, record: Mapping[str, Any], *, novelty=None, stat_outlier=False) -> str | None:
        """Log one answer (its record needs no `sha256`/`captured`: they are filled in); returns why it was captured."""
        record = {**record, "sha256": record.get("sha256") or sha256_of(data), "captured": False}
        reason = self.policy.reason(score=float(record["score"]), novelty=novelty, stat_outlier=stat_outlier)
        if reason and self.capture is not None:
            self.capture.submit(data, record)
        else:
            self.log.append(record)
        return reason

    def counters(self) -> dict[str, int]:
        c = self.capture
        return {
            "log_written": self.log.written,
            "log_failures": self.log.failures,
            "log_dropped": self.log.dropped,
            "captured": c.captured if c else 0,
            "capture_failed": c.failed if c else 0,
            "capture_skipped_busy": c.skipped_busy if c else 0,
        }

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()  # queued images first: their records go to the log
        self.log.close()

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AnswerLogCollector:
    """The production log's and the capture store's counters, read when /metrics is scraped."""

    HELP: ClassVar[dict[str, str]] = {
        "log_written": "production-log records written",
        "log_failures": "production-log flushes that failed (retried)",
        "log_dropped": "production-log records dropped after repeated failures",
        "captured": "images kept in the capture store",
        "capture_failed": "images the capture store could not keep (the answer went out)",
        "capture_skipped_busy": "images not kept because the capture queue was full",
    }

    def __init__(self, answers):
        self.answers = answers

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        for name, value in self.answers.counters().items():
            yield CounterMetricFamily(f"lensops_{name}", self.HELP[name], value=value)
