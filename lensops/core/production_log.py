"""The production log: what serving saw, as parquet segments that monitoring reads.

Serving appends one record per successful prediction; a background thread writes the buffer
as a new parquet segment every `flush_seconds` or every `flush_records` records, whichever
comes first. A segment is written under a hidden temporary name and renamed into place, so a
reader never sees half a segment. `close()` flushes what is left: a clean shutdown loses
nothing, a crash loses at most the records of the last flush interval.

The format lives here, apart from serving and monitoring, because both depend on it:

| column | type | meaning |
| --- | --- | --- |
| `time` | timestamp (UTC, ms) | when the answer was given |
| `request_id` | string | the id returned to the client |
| `model_name`, `model_version` | string | the version that answered |
| `embedding` | list of float32 | the model's penultimate embedding |
| `label`, `score` | string, float | the top prediction |
| `width`, `height` | int | the uploaded image's size |
| `brightness`, `contrast` | float | mean and standard deviation of its greyscale pixels, 0-255 |
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

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
)
SEGMENT_GLOB = "segment-*.parquet"


class ProductionLogError(ValueError):
    """A record misses a field, or the log folder holds something unreadable."""


def _schema():
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
        ]
    )


def write_segment(folder: Path, records: list[Mapping[str, Any]]) -> Path | None:
    """Write records as one segment, atomically (temporary name, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not records:
        return None
    missing = [c for c in COLUMNS if c != "time" and c not in records[0]]
    if missing:
        raise ProductionLogError(f"production log record misses {', '.join(missing)}")
    columns = {c: [r.get(c) for r in records] for c in COLUMNS}
    columns["time"] = [r.get("time") or pd.Timestamp.now(tz="UTC") for r in records]
    columns["embedding"] = [[float(x) for x in e] for e in columns["embedding"]]
    table = pa.Table.from_pydict(columns, schema=_schema())
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"segment-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
    temporary = folder / f".{name}.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, folder / name)  # atomic on one filesystem: readers see all or nothing
    return folder / name


class ProductionLogWriter:
    """Thread-safe appender with a background flusher. Use as a context manager or call close()."""

    def __init__(self, folder: Path | str, *, flush_seconds: float = 1.0, flush_records: int = 512):
        self.folder = Path(folder)
        self.flush_seconds, self.flush_records = flush_seconds, flush_records
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.written = 0
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
        with self._lock:
            records, self._buffer = self._buffer, []
        if records:
            write_segment(self.folder, records)
            self.written += len(records)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # keep serving; the records stay lost only if writing keeps failing
                time.sleep(self.flush_seconds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()

    def __enter__(self) -> ProductionLogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def segments(folder: Path | str) -> list[Path]:
    return sorted(Path(folder).glob(SEGMENT_GLOB))


def read_log(
    folder: Path | str,
    *,
    model_version: str | None = None,
    since: pd.Timestamp | str | None = None,
    last: int | None = None,
) -> pd.DataFrame:
    """The log as one frame, oldest first; optionally one model version, records since a time, or the last N."""
    import pyarrow.parquet as pq

    files = segments(folder)
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f).to_pandas())
        except Exception as e:  # a foreign or damaged file: say which, do not guess
            raise ProductionLogError(f"{f}: not a production-log segment ({e})") from None
    frame = pd.concat(tables, ignore_index=True).sort_values("time", kind="stable", ignore_index=True)
    if model_version is not None:
        frame = frame[frame.model_version == str(model_version)]
    if since is not None:
        stamp = pd.Timestamp(since)
        frame = frame[frame.time >= (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp)]
    if last is not None:
        frame = frame.tail(last)
    return frame.reset_index(drop=True)


def image_stats(pixels_grey: Iterable[float] | Any) -> tuple[float, float]:
    """(brightness, contrast): mean and standard deviation of greyscale pixels (0-255)."""
    import numpy as np

    array = np.asarray(pixels_grey, dtype=np.float64)
    return float(array.mean()), float(array.std())
