"""The capture store and its writer: exact bytes by sha256, a byte budget, and never a record without its image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lensops.core.capture import CapturePolicy, CaptureStore, CaptureWriter, sha256_of
from lensops.core.production_log import ProductionLogWriter, read_log
from tests.conftest import REPO
from tests.unit.test_production_log import record


def test_the_same_bytes_are_kept_once_exactly_as_received(tmp_path):
    store = CaptureStore(tmp_path, max_bytes=10_000)
    data = b"\x89PNG not really, but bytes are bytes"
    sha = store.put(data)
    assert sha == sha256_of(data) and store.get(sha).read_bytes() == data
    assert store.put(data) == sha and len(store.files()) == 1
    assert store.get("0" * 64) is None


def test_a_byte_budget_evicts_the_least_recently_seen_first(tmp_path):
    store = CaptureStore(tmp_path, max_bytes=2500)
    shas = []
    for i in range(3):
        shas.append(store.put(bytes([i]) * 1000))
        os.utime(store.path(shas[-1]), (1000 + i, 1000 + i))  # seen in order
    store.put(bytes([0]) * 1000)  # the first seen again: now the newest
    store.put(bytes([9]) * 1000)
    kept = {p.name for p, _, _ in store.files()}
    assert shas[1] not in kept and shas[0] in kept and store.usage() <= 2500


def test_retention_forgets_images_not_seen_for_long(tmp_path):
    store = CaptureStore(tmp_path, max_bytes=10**9, retention_days=1)
    old = store.put(b"old")
    os.utime(store.path(old), (time.time() - 3 * 86400,) * 2)
    fresh = store.put(b"fresh")
    assert store.evict() == 1 and store.get(old) is None and store.get(fresh) is not None


def test_the_policy_keeps_low_scores_and_outliers_always_and_samples_the_rest():
    policy = CapturePolicy(sample_rate=0.25, low_score_below=0.6, seed=3)
    assert policy.reason(score=0.3) == "low_score"
    assert policy.reason(score=0.99, novelty=1.7) == "outlier"
    assert policy.reason(score=0.99, stat_outlier=True) == "outlier"
    sampled = [policy.reason(score=0.99, novelty=0.5) for _ in range(4000)]
    assert 0.22 < sampled.count("sample") / 4000 < 0.28
    assert CapturePolicy(enabled=False).reason(score=0.1) is None


def test_the_writer_logs_each_record_after_its_image_and_survives_a_broken_disk(tmp_path):
    log = ProductionLogWriter(tmp_path / "log", flush_seconds=0.05)
    good = CaptureWriter(CaptureStore(tmp_path / "capture", max_bytes=10**6), log.append)
    (tmp_path / "full").write_text("not a folder")  # every capture into it fails
    broken = CaptureWriter(CaptureStore(tmp_path / "full", max_bytes=10**6), log.append)
    for i in range(5):
        data = f"image {i}".encode()
        good.submit(data, {**record(i), "sha256": sha256_of(data)})
        broken.submit(data + b"!", {**record(100 + i), "sha256": sha256_of(data + b"!")})
    good.close()
    broken.close()
    log.close()
    frame = read_log(tmp_path / "log")
    assert len(frame) == 10  # every answer logged, captured or not
    captured = frame[frame.captured]
    assert sorted(captured.request_id) == [f"r{i}" for i in range(5)] and broken.failed == 5
    assert all((tmp_path / "capture" / s[:2] / s).is_file() for s in captured.sha256)


KILLED_WRITER = """
import sys, time
from lensops.core.capture import CaptureStore, CaptureWriter, sha256_of
from lensops.core.production_log import ProductionLogWriter
log = ProductionLogWriter(sys.argv[1] + "/log", flush_seconds=0.01, flush_records=1)
writer = CaptureWriter(CaptureStore(sys.argv[1] + "/capture", max_bytes=10**9), log.append, max_queue=10_000)
print("ready", flush=True)
for i in range(100_000):
    data = (b"%d" % i) * 2000
    writer.submit(data, {"request_id": str(i), "model_name": "m", "model_version": "1", "embedding": [0.0],
                         "label": "a", "score": 1.0, "width": 1, "height": 1, "brightness": 0.0,
                         "contrast": 0.0, "sha256": sha256_of(data)})
    time.sleep(0.0005)
"""


@pytest.mark.slow
def test_a_crash_between_capture_and_log_never_leaves_a_record_without_its_image(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout.readline().strip() == b"ready"
    time.sleep(2)
    process.send_signal(signal.SIGKILL)  # no clean shutdown: whatever was in flight is cut off
    process.wait()
    frame = read_log(tmp_path / "log")
    assert len(frame) > 10
    store = CaptureStore(tmp_path / "capture", max_bytes=10**9)
    assert all(store.get(sha) is not None for sha in frame[frame.captured].sha256)
    assert all(sha256_of(p.read_bytes()) == p.name for p, _, _ in store.files())  # no half-written image
