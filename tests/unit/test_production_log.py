"""The production-log format: atomic parquet segments, flushed by time and count, nothing lost on close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

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
    (tmp_path / "segment-x.parquet").write_text("not parquet")
    with pytest.raises(ProductionLogError, match=r"segment-x\.parquet"):
        read_log(tmp_path)
    log = ProductionLogWriter(tmp_path / "closed")
    log.close()
    with pytest.raises(ProductionLogError, match="closed"):
        log.append(record(1))
