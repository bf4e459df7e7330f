"""The production-log format: atomic parquet segments, flushed by time and count, nothing lost on close."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lensops.core.log_reader import maintain, scan_log
from lensops.core.production_log import ProductionLogError, ProductionLogWriter, read_log, segments, write_segment


def record(i: int, version: str = "1") -> dict:
    return {
        "request_id": f"r{i}",
        "model_name": "digits",
        "model_version": version,
        "embedding": np.full(4, i, dtype=np.float32),
        "label": str(i % 3),
        "score": 0.5 + i / 1000,
        "width": 32,
        "height": 32,
        "brightness": float(i),
        "contrast": 1.0,
    }


def test_close_flushes_everything_in_order(tmp_path):
    with ProductionLogWriter(tmp_path, flush_seconds=60, flush_records=1000) as log:
        for i in range(25):
            log.append(record(i))
        assert segments(tmp_path) == []  # nothing due yet: neither the interval nor the count
    frame = read_log(tmp_path)
    assert list(frame.request_id) == [f"r{i}" for i in range(25)]
    assert frame.embedding.iloc[7].dtype == np.float32 and list(frame.embedding.iloc[7]) == [7.0] * 4
    assert str(frame.time.dt.tz) == "UTC"


def test_flushes_by_count_and_by_time(tmp_path):
    log = ProductionLogWriter(tmp_path, flush_seconds=0.2, flush_records=10)
    try:
        for i in range(10):
            log.append(record(i))
        deadline = time.monotonic() + 5
        while not segments(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(read_log(tmp_path)) == 10  # the count triggered a segment
        log.append(record(10))
        time.sleep(0.6)
        assert len(read_log(tmp_path)) == 11  # the interval flushed the straggler without close()
    finally:
        log.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    with ProductionLogWriter(tmp_path, flush_seconds=0.05, flush_records=7) as log:
        threads = [
            threading.Thread(target=lambda k=k: [log.append(record(k * 100 + i)) for i in range(50)]) for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    frame = read_log(tmp_path)
    assert len(frame) == 200 and frame.request_id.is_unique


def test_readers_never_see_a_half_written_segment(tmp_path):
    write_segment(tmp_path, [record(1)])
    (tmp_path / ".segment-20260101T000000-abc.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert len(read_log(tmp_path)) == 1


def test_filters_by_version_time_and_count(tmp_path):
    early = pd.Timestamp("2026-01-01", tz="UTC")
    write_segment(tmp_path, [{**record(i), "time": early} for i in range(3)])
    write_segment(tmp_path, [record(i, version="2") for i in range(3, 8)])
    assert len(read_log(tmp_path, model_version="2")) == 5
    assert len(read_log(tmp_path, since="2026-06-01")) == 5
    assert list(read_log(tmp_path, last=2).request_id) == ["r6", "r7"]
    assert read_log(tmp_path / "nothing-yet").empty


def test_bad_records_and_foreign_files_are_named(tmp_path):
    bad = record(0)
    del bad["embedding"]
    with pytest.raises(ProductionLogError, match="misses embedding"):
        write_segment(tmp_path, [bad])
    write_segment(tmp_path, [record(1)])
    (tmp_path / "segment-x.parquet").write_text("not parquet")
    (tmp_path / "segment-0000000000001-0000000000002-abc.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("someone's notes")
    scan = scan_log(tmp_path)
    assert len(scan.frame) == 1  # the good segment is read; the others are skipped and named, never fatal
    assert sorted(Path(s["file"]).name for s in scan.skipped) == [
        "notes.txt",
        "segment-0000000000001-0000000000002-abc.parquet",
        "segment-x.parquet",
    ]
    log = ProductionLogWriter(tmp_path / "closed")
    log.close()
    with pytest.raises(ProductionLogError, match="closed"):
        log.append(record(1))


def test_a_failed_flush_is_retried_and_loses_nothing(tmp_path):
    blocked = tmp_path / "log"
    blocked.write_text("a file where the log folder should be")  # every write fails until it goes
    log = ProductionLogWriter(blocked, flush_seconds=0.05, flush_records=5)
    try:
        for i in range(12):
            log.append(record(i))
        deadline = time.monotonic() + 5
        while log.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.failures >= 2 and log.written == 0 and log.dropped == 0
        blocked.unlink()  # the disk is back
        deadline = time.monotonic() + 10
        while log.written < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        log.close()
    assert sorted(read_log(blocked).request_id) == sorted(f"r{i}" for i in range(12))


def test_the_last_n_records_are_read_from_the_newest_segments_only(tmp_path):
    for day in range(1, 11):
        stamp = pd.Timestamp(f"2026-03-{day:02d}", tz="UTC")
        write_segment(tmp_path, [{**record(day * 100 + i), "time": stamp + pd.Timedelta(seconds=i)} for i in range(50)])
    scan = scan_log(tmp_path, last=60)
    assert len(scan.frame) == 60 and scan.segments_read == 2
    assert scan.frame.time.min() >= pd.Timestamp("2026-03-09", tz="UTC")
    since = scan_log(tmp_path, since="2026-03-08T12:00:00Z")
    assert len(since.frame) == 100 and since.segments_read == 2


def test_compaction_merges_small_segments_and_retention_removes_old_ones(tmp_path):
    old = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=400)
    write_segment(tmp_path, [{**record(0), "time": old}])
    recent = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=2)
    for k in range(6):
        write_segment(
            tmp_path, [{**record(10 + k * 3 + i), "time": recent + pd.Timedelta(seconds=k)} for i in range(3)]
        )
    outcome = maintain(tmp_path, retention_days=90, target_records=1000, min_age_s=60)
    assert outcome == {"merged": 6, "removed": 1}
    assert len(segments(tmp_path)) == 1
    frame = read_log(tmp_path)
    assert len(frame) == 18 and frame.request_id.is_unique


def test_segments_written_before_sha256_was_kept_still_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lensops.core.production_log import schema

    legacy = pa.schema([f for f in schema() if f.name not in ("sha256", "captured")])
    rows = {f.name: [record(1).get(f.name)] for f in legacy}
    rows["time"] = [pd.Timestamp("2026-01-01", tz="UTC")]
    rows["embedding"] = [[1.0, 2.0]]
    pq.write_table(pa.Table.from_pydict(rows, schema=legacy), tmp_path / "segment-20260101T000000-abcdef.parquet")
    frame = read_log(tmp_path)
    assert len(frame) == 1 and not frame.captured.iloc[0]
    assert frame.sha256.isna().all()
