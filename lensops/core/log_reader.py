"""Reading the production log by window, and keeping it small: compaction and retention.

`scan_log` reads only what a window needs. Segment names carry the times they hold, so a
`since` skips older segments unread, and `last` reads the newest segments' `time` and
`model_version` columns first and then the full rows of only those segments that hold the last N
records of the version. A corrupt, empty or foreign file in the log folder is skipped with a
warning and listed in `LogScan.skipped`; it never stops a read.

`maintain` merges small segments into larger ones (fewer files to open; a reader that lists
the folder mid-merge may see a record twice, which `scan_log` drops by request id) and removes
segments older than the retention period, under a file lock so two maintainers never race.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .production_log import COLUMNS, OPTIONAL, SEGMENT_GLOB, schema, write_table

log = logging.getLogger("lensops.production_log")
SPAN = re.compile(r"^segment-(\d{13})-(\d{13})-[0-9a-f]+\.parquet$")


@dataclass
class Segment:
    path: Path
    first_ms: int
    last_ms: int
    rows: int | None = None


@dataclass
class LogScan:
    frame: pd.DataFrame
    skipped: list[dict[str, str]] = field(default_factory=list)  # {file, reason}
    segments_read: int = 0


def _ms(times: pd.Series) -> pd.Series:
    """Milliseconds since the epoch, whatever unit the timestamps are stored in."""
    return (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def list_segments(folder: Path, skipped: list[dict[str, str]]) -> list[Segment]:
    """Every segment with its time span: from its name, or (for older names) from its `time` column."""
    import pyarrow.parquet as pq

    found = []
    for path in sorted(Path(folder).glob(SEGMENT_GLOB)):
        if match := SPAN.match(path.name):
            found.append(Segment(path, int(match[1]), int(match[2])))
            continue
        try:
            times = pq.read_table(path, columns=["time"])["time"].to_pandas()
            ms = _ms(times) if len(times) else pd.Series([0])
            found.append(Segment(path, int(ms.min()), int(ms.max()), len(times)))
        except Exception as e:
            _skip(skipped, path, e)
    return found


def _skip(skipped: list[dict[str, str]], path: Path, error: Exception) -> None:
    reason = f"{type(error).__name__}: {error}"[:300]
    log.warning("production log: skipping %s (%s)", path, reason)
    skipped.append({"file": str(path), "reason": reason})


def _foreign(folder: Path, skipped: list[dict[str, str]]) -> None:
    """Files in the log folder that are not segments (nor hidden temporary files) are reported, never read."""
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        foreign = not path.name.startswith(".") and not SPAN.match(path.name) and not path.match(SEGMENT_GLOB)
        if foreign and path.is_file():
            skipped.append({"file": str(path), "reason": "not a production-log segment"})


def _read(path: Path, *, columns=None, version: str | None = None, since_ms: int | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=columns)
    for name, default in OPTIONAL.items():  # segments written before these columns were kept
        if (columns is None or name in columns) and name not in table.column_names:
            table = table.append_column(name, pa.array([default] * len(table), type=schema().field(name).type))
    frame = table.to_pandas()
    if version is not None:
        frame = frame[frame["model_version"] == str(version)]
    if since_ms is not None:
        frame = frame[_ms(frame["time"]) >= since_ms]
    return frame


def _newest_for(segments: list[Segment], last: int, version, since_ms, skipped) -> list[Segment]:
    """The segments that hold the last `last` records of the version, newest first, reading two columns."""
    chosen, times = [], []
    for seg in sorted(segments, key=lambda s: s.last_ms, reverse=True):
        cutoff = sorted(times, reverse=True)[last - 1] if len(times) >= last else None
        if cutoff is not None and seg.last_ms < cutoff:
            break  # every record left is older than the N newest already found
        try:
            frame = _read(seg.path, columns=["time", "model_version"], version=version, since_ms=since_ms)
        except Exception as e:
            _skip(skipped, seg.path, e)
            continue
        times.extend(_ms(frame["time"]).tolist())
        if len(frame):
            chosen.append(seg)
    return chosen


def scan_log(
    folder: Path | str,
    *,
    model_version: str | None = None,
    since: pd.Timestamp | str | None = None,
    last: int | None = None,
) -> LogScan:
    """The records of a window, oldest first: one model version, records since a time, the last N."""
    folder = Path(folder)
    result = LogScan(_empty())
    if not folder.is_dir():
        return result
    _foreign(folder, result.skipped)
    since_ms = None
    if since is not None:
        stamp = pd.Timestamp(since)
        since_ms = int((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).value // 1_000_000)
    segments = [s for s in list_segments(folder, result.skipped) if since_ms is None or s.last_ms >= since_ms]
    if last is not None:
        segments = _newest_for(segments, last, model_version, since_ms, result.skipped)
    frames = []
    for seg in segments:
        try:
            frames.append(_read(seg.path, version=model_version, since_ms=since_ms))
            result.segments_read += 1
        except Exception as e:
            _skip(result.skipped, seg.path, e)
    frames = [f for f in frames if len(f)]
    if not frames:
        return result
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("request_id", keep="first")
    frame = frame.sort_values("time", kind="stable", ignore_index=True)
    result.frame = (frame.tail(last) if last is not None else frame).reset_index(drop=True)
    return result


def find_record(folder: Path | str, request_id: str) -> dict | None:
    """The record of one request (its embedding included), or None; reads each segment's `request_id` column first."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    skipped: list[dict[str, str]] = []
    for seg in sorted(list_segments(folder, skipped), key=lambda s: s.last_ms, reverse=True):  # newest first
        try:
            ids = _read(seg.path, columns=["request_id"])["request_id"]
            if not (ids == request_id).any():
                continue
            frame = _read(seg.path)
        except Exception as e:
            _skip(skipped, seg.path, e)
            continue
        return frame[frame["request_id"] == request_id].iloc[0].to_dict()
    return None


def maintain(
    folder: Path | str, *, retention_days: float | None = None, target_records: int = 50_000, min_age_s: float = 60
) -> dict[str, int]:
    """Compact small segments older than `min_age_s` into segments of about `target_records`, and drop
    segments wholly older than the retention period. Returns how many files were merged and removed."""
    import filelock

    folder = Path(folder)
    if not folder.is_dir():
        return {"merged": 0, "removed": 0}
    try:
        with filelock.FileLock(str(folder / ".maintain.lock"), timeout=0):
            segments = list_segments(folder, [])
            removed = _apply_retention(segments, retention_days)
            kept = [s for s in segments if s.path.exists()]
            return {"merged": _compact(kept, folder, target_records, min_age_s), "removed": removed}
    except filelock.Timeout:  # another process maintains the log right now
        return {"merged": 0, "removed": 0}


def _apply_retention(segments: list[Segment], retention_days: float | None) -> int:
    if retention_days is None:
        return 0
    horizon = (time.time() - retention_days * 86400) * 1000
    old = [s for s in segments if s.last_ms < horizon]
    for s in old:
        s.path.unlink(missing_ok=True)
    return len(old)


def _compact(segments: list[Segment], folder: Path, target_records: int, min_age_s: float) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    settled = (time.time() - min_age_s) * 1000
    small = []
    for s in sorted(segments, key=lambda s: s.first_ms):
        if s.last_ms >= settled:
            continue
        try:
            s.rows = s.rows if s.rows is not None else pq.ParquetFile(s.path).metadata.num_rows
        except Exception:  # a damaged file is left where it is; readers skip and report it
            continue
        if s.rows < target_records // 2:
            small.append(s)
    merged, batch = 0, []
    for s in [*small, None]:
        if s is not None and sum(b.rows for b in batch) + s.rows <= target_records:
            batch.append(s)
            continue
        if len(batch) > 1:
            tables = [_read(b.path) for b in batch]
            write_table(folder, pa.Table.from_pandas(pd.concat(tables), schema=schema(), preserve_index=False))
            for b in batch:  # the merged segment is durable before its parts go
                b.path.unlink(missing_ok=True)
            merged += len(batch)
        batch = [s] if s is not None else []
    return merged
