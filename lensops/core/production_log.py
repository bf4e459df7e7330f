"""The production log: what serving saw, as parquet segments that monitoring reads.

Serving appends one record per successful prediction; a background thread writes the buffer
as a new segment every `flush_seconds` or every `flush_records` records, whichever comes first.
A segment is written under a hidden temporary name, fsynced, renamed into place and its folder
fsynced, so a reader never sees half a segment and a crash never loses one that was reported
written. A flush that fails is retried with backoff; its records stay in the buffer, the failure
is logged and counted (`failures`), and only a buffer past `max_buffer` records drops its oldest,
counted too (`dropped`). `close()` flushes what is left: a clean shutdown loses nothing.

| column | type | meaning |
| --- | --- | --- |
| `time` | timestamp (UTC, ms) | when the answer was given |
| `request_id` | string | the id returned to the client |
| `model_name`, `model_version` | string | the version that answered |
| `embedding` | list of float32 | the model's penultimate embedding |
| `label`, `score` | string, float | the top prediction |
| `width`, `height` | int | the uploaded image's size |
| `brightness`, `contrast` | float | mean and standard deviation of its greyscale pixels, 0-255 |
| `sha256` | string | the uploaded bytes' sha256 (null in segments written before it was kept) |
| `captured` | bool | whether the bytes are in the capture store (`lensops.core.capture`) |

Segments are named `segment-<first ms>-<last ms>-<id>.parquet` after the times they hold, so a
reader skips whole segments by name (`lensops.core.log_reader`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("lensops.production_log")

COLUMNS = (
    "time",
    "request_id",
    "model_name",
    "model_version",
    "embedding",
    "label",
    "score",
    "width",
    "height",
    "brightness",
    "contrast",
    "sha256",
    "captured",
)
OPTIONAL = {"sha256": None, "captured": False}  # columns older segments lack, and their value there
SEGMENT_GLOB = "segment-*.parquet"
MAX_BACKOFF_S = 30.0


class ProductionLogError(ValueError):
    """A record misses a field, or the log is closed."""


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("time", pa.timestamp("ms", tz="UTC")),
            ("request_id", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("brightness", pa.float64()),
            ("contrast", pa.float64()),
            ("sha256", pa.string()),
            ("captured", pa.bool_()),
        ]
    )


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _table(records: list[Mapping[str, Any]]):
    import pyarrow as pa

    missing = [c for c in COLUMNS if c != "time" and c not in OPTIONAL and c not in records[0]]
    if missing:
        raise ProductionLogError(f"production log record misses {', '.join(missing)}")
    columns = {c: [r.get(c, OPTIONAL.get(c)) for r in records] for c in COLUMNS}
    columns["time"] = [pd.Timestamp(r.get("time") or pd.Timestamp.now(tz="UTC")) for r in records]
    columns["embedding"] = _float_lists([np.ravel(e) for e in columns["embedding"]])
    columns["captured"] = [bool(c) for c in columns["captured"]]
    return pa.Table.from_pydict(columns, schema=schema())


def _float_lists(arrays: list[np.ndarray]):
    """One list<float32> column from vectors of any float type, in one copy and one cast (not a
    Python float per element: that cost the ingress 0.9 ms of CPU per 32 answers)."""
    import pyarrow as pa

    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(np.float32, copy=False) if arrays else np.zeros(0, dtype=np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), type=pa.list_(pa.float32()))


def segment_name(first: pd.Timestamp, last: pd.Timestamp) -> str:
    ms = lambda t: int(pd.Timestamp(t).value // 1_000_000)  # noqa: E731
    return f"segment-{ms(first):013d}-{ms(last):013d}-{uuid.uuid4().hex[:12]}.parquet"


def write_table(folder: Path, table) -> Path:
    """Write a table of log records as one segment, durably and atomically."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    name = segment_name(pc.min(table["time"]).as_py(), pc.max(table["time"]).as_py())
    temporary = folder / f".{name}.tmp"
    with open(temporary, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / name)  # atomic on one filesystem: readers see all or nothing
    fsync_folder(folder)
    return folder / name


def write_segment(folder: Path, records: list[Mapping[str, Any]]) -> Path | None:
    """Write records as one segment (see `write_table`)."""
    return write_table(Path(folder), _table(records)) if records else None


class ProductionLogWriter:
    """Thread-safe appender with a background flusher. Use as a context manager or call close()."""

    def __init__(
        self,
        folder: Path | str,
        *,
        flush_seconds: float = 1.0,
        flush_records: int = 512,
        max_buffer: int = 200_000,
    ):
        self.folder = Path(folder)
        self.flush_seconds, self.flush_records, self.max_buffer = flush_seconds, flush_records, max_buffer
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.written = self.failures = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="production-log-flusher", daemon=True)
        self._thread.start()

    def append(self, record: Mapping[str, Any]) -> None:
        if self._closed:
            raise ProductionLogError("the production log is closed")
        with self._lock:
            self._buffer.append({**record, "time": record.get("time") or pd.Timestamp.now(tz="UTC")})
            full = len(self._buffer) >= self.flush_records
        if full:
            self._wake.set()

    def flush(self) -> None:
        """Write the buffer as one segment; on failure the records go back to the buffer and the error is raised."""
        with self._write_lock:
            with self._lock:
                records, self._buffer = self._buffer, []
            if not records:
                return
            try:
                write_segment(self.folder, records)
            except Exception:
                with self._lock:
                    self._buffer = records + self._buffer
                    self._drop_overflow()
                raise
            self.written += len(records)

    def _drop_overflow(self) -> None:
        excess = len(self._buffer) - self.max_buffer
        if excess > 0:
            del self._buffer[:excess]
            self.dropped += excess
            log.error("production log: %d records dropped after failed writes (buffer full)", excess)

    def _run(self) -> None:
        backoff = self.flush_seconds
        while not self._closed:
            self._wake.wait(backoff)
            self._wake.clear()
            try:
                self.flush()
                backoff = self.flush_seconds
            except Exception as e:  # keep serving; the records wait in the buffer for the next try
                self.failures += 1
                backoff = min(MAX_BACKOFF_S, 2 * backoff)
                log.error("production log: writing to %s failed (%s); retrying in %.0f s", self.folder, e, backoff)

    def close(self, *, attempts: int = 3) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        for attempt in range(attempts):
            try:
                self.flush()
                return
            except Exception as e:
                self.failures += 1
                log.error("production log: final write to %s failed (%s)", self.folder, e)
                time.sleep(0.2 * (attempt + 1))
        with self._lock:
            lost, self._buffer = len(self._buffer), []
        self.dropped += lost
        log.error("production log: %d records could not be written to %s and are lost", lost, self.folder)

    def __enter__(self) -> ProductionLogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def segments(folder: Path | str) -> list[Path]:
    return sorted(Path(folder).glob(SEGMENT_GLOB))


def read_log(folder: Path | str, **window) -> pd.DataFrame:
    """The log as one frame, oldest first (see `lensops.core.log_reader.scan_log` for the window and what it skips)."""
    from .log_reader import scan_log

    return scan_log(folder, **window).frame


def image_stats(pixels_grey: Iterable[float] | Any) -> tuple[float, float]:
    """(brightness, contrast): mean and standard deviation of greyscale pixels (0-255)."""
    import numpy as np

    array = np.asarray(pixels_grey, dtype=np.float64)
    return float(array.mean()), float(array.std())
