"""Live evidence: the champion's production log joined with its shadow's, on real log segments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.provenance import write_batch
from lensops.core.errors import UsageError
from lensops.core.production_log import write_segment
from lensops.core.settings import load_settings
from training.live_review import live_charts, live_evidence, live_matrix

CLASSES = ["0", "1", "2", "3"]
SWAP = {"1": "2", "2": "1"}  # the challenger answers 2 where the champion says 1, and the other way round


def _record(i: int, version: str, label: str, at: pd.Timestamp) -> dict:
    return {
        "time": at,
        "request_id": f"r{i}",
        "model_name": "digits",
        "model_version": version,
        "embedding": np.zeros(4, np.float32),
        "label": label,
        "score": 0.9,
        "width": 8,
        "height": 8,
        "brightness": 100.0,
        "contrast": 20.0,
        "sha256": f"{i:064x}",
        "captured": False,
    }


@pytest.fixture
def logs(project):
    """200 answers by v1, 150 of them shadowed by v2 (which swaps 1 and 2), 20 shadowed by v3; 30 labelled."""
    settings = load_settings(project / "params.yaml")
    start = pd.Timestamp("2026-12-01T08:00", tz="UTC")
    champion, shadow = [], []
    for i in range(200):
        at = start + pd.Timedelta(minutes=i)
        label = CLASSES[i % 4]
        champion.append(_record(i, "1", label, at))
        if i < 150:
            shadow.append(_record(i, "2", SWAP.get(label, label), at + pd.Timedelta(milliseconds=30)))
        elif i < 170:
            shadow.append(_record(i, "3", label, at))
    write_segment(settings.path(settings.monitoring.log_dir), champion[:120])
    write_segment(settings.path(settings.monitoring.log_dir), champion[120:])
    write_segment(settings.path(settings.monitoring.shadow_log_dir), shadow)
    # People labelled 30 of the shadowed images: the truth is the champion's answer, but for 1 and 2 it is 2.
    labels = [{"path": f"{c}/{i}.png", "sha256": f"{i:064x}", "label": "2" if c == "1" else c, "source": "production"}
              for i, c in ((i, CLASSES[i % 4]) for i in range(30))]  # fmt: skip
    write_batch(settings.path(settings.data.raw), "b1", labels, settings.label.provenance_dir)
    return settings, start


def test_agreement_per_class_matrix_and_live_accuracy(logs):
    settings, _ = logs
    live = live_evidence(settings, "1", "2", None)
    assert live["n"] == 150 and live["shadow_records"] == 150
    assert live["agreement"] == pytest.approx(75 / 150, abs=0.01)  # classes 1 and 2 of four disagree
    assert {k: c["agreement"] for k, c in live["per_class"].items()} == {"0": 1.0, "1": 0.0, "2": 0.0, "3": 1.0}
    assert live["matrix"]["1"] == {"2": 38} and live["matrix"]["2"] == {"1": 37} and live["matrix"]["0"] == {"0": 38}
    assert {(d["champion"], d["challenger"]) for d in live["disagreements"]} == {("1", "2"), ("2", "1")}
    labelled = live["labelled"]
    assert labelled["n"] == 30
    # Of the 30, the 8 whose champion label is 1 are truly 2: the challenger gets those right and the 7 twos wrong.
    assert labelled["champion_accuracy"] == pytest.approx(22 / 30) and labelled["challenger_accuracy"] == 23 / 30


def test_since_and_version_select_the_window(logs, tmp_path):
    settings, start = logs
    later = live_evidence(settings, "1", "2", str(start + pd.Timedelta(minutes=100)))
    assert later["n"] == 50 and later["first"].startswith("2026-12-01 09:40")
    other = live_evidence(settings, "1", "3", None)
    assert other["n"] == 20 and other["agreement"] == 1.0 and other["disagreements"] == []
    nothing = live_evidence(settings, "9", "2", None)
    assert nothing["n"] == 0 and nothing["agreement"] is None
    assert live_charts(settings, nothing, tmp_path, max_shown=4) == {}
    charts = live_charts(settings, live_evidence(settings, "1", "2", None), tmp_path, max_shown=4)
    assert set(charts) == {"live_matrix"}  # nothing was captured: no grid of images
    assert charts["live_matrix"].stat().st_size > 1000
    with pytest.raises(UsageError, match="--since 'yesterday-ish'"):
        live_evidence(settings, "1", "2", "yesterday-ish")


def test_the_live_matrix_has_every_class_of_both_versions_in_their_order(logs):
    settings, _ = logs
    classes = [*CLASSES, "4"]  # a class no shadowed request was answered with
    names, matrix = live_matrix(live_evidence(settings, "1", "2", None, classes))
    assert names == classes and matrix.shape == (5, 5)
    assert matrix[4].sum() == matrix[:, 4].sum() == 0 and matrix.sum() == 150
    assert matrix[1, 2] == 38 and matrix[1, 1] == 0  # champion 1, challenger 2
    names, _ = live_matrix(live_evidence(settings, "1", "2", None))  # without the versions' classes: the labels seen
    assert names == CLASSES
