"""A folder of hostile files: validation always finishes, always writes its report, and names
every bad file with its reason, while the good files stay valid."""

import json

import pandas as pd
import pytest

from data.validation import validate_dataset
from lensops.core.settings import load_settings
from tests.hostile import LIMITS, plant_awkward, plant_hostile

OVERRIDES = [f"{key}={value}" for key, value in LIMITS.items()]


@pytest.fixture
def hostile_raw(good_raw, tmp_path):
    reasons = plant_hostile(good_raw, tmp_path / "outside")
    awkward = plant_awkward(good_raw)
    return good_raw, reasons, awkward


def test_every_hostile_file_is_bad_with_its_reason_and_the_run_completes(hostile_raw, project):
    _raw, expected, awkward = hostile_raw
    report = validate_dataset(load_settings(overrides=OVERRIDES), progress=False)

    written = json.loads((project / "reports" / "data_validation.json").read_text())
    assert written["ok"] is False and written["bad_files"] == report.bad_files
    assert (project / "reports" / "data_validation.png").is_file()
    assert (project / "reports" / "data_quality.png").is_file()
    assert (project / "reports" / "data_manifest.parquet").is_file()

    reasons = {b["path"]: b["reason"] for b in report.bad_files}
    assert sorted(reasons) == sorted(expected), "only the hostile files are bad"
    for path, words in expected.items():
        assert words in reasons[path], (path, reasons[path])
    assert not set(awkward) & set(reasons), "valid but awkward images pass"
    assert report.class_counts == {"ant": 12 + 4, "bee": 12 + 3, "cat": 12 + 2}
    # The slow file is stopped at its deadline, not decoded to the end (its reason above says so), and nothing
    # hangs on the FIFO: the run finished and wrote its report. How long it takes is measured by
    # benchmarks/hostile_validation.py, never asserted here.


def test_files_over_the_byte_cap_are_never_read(good_raw, project):
    big = good_raw / "ant" / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000)
    report = validate_dataset(load_settings(overrides=["validate.max_bytes=4096"]), progress=False)
    (bad,) = report.bad_files
    assert bad["path"] == "ant/big.png" and "5,008 bytes, over the 4,096-byte limit" in bad["reason"]
    manifest = pd.read_parquet(project / "reports" / "data_manifest.parquet").set_index("path")
    assert pd.isna(manifest.at["ant/big.png", "sha256"])  # judged by its size; never read
