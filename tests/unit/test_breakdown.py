"""The drift breakdown on synthetic embeddings: what it flags, and inputs it must not trip over."""

import numpy as np
import pandas as pd

from lensops.core.sections import DriftSettings
from monitoring.breakdown import breakdown
from monitoring.grids import slug

CENTRES = {"cat": [1.0, 0.0, 0.0, 0.0], "dog": [0.0, 1.0, 0.0, 0.0], "owl": [0.0, 0.0, 1.0, 0.0]}


def frame(counts: dict[str, int], rng, *, column: str, centre: dict | None = None) -> pd.DataFrame:
    rows = []
    for label, n in counts.items():
        where = np.array((centre or {}).get(label, CENTRES[label]))
        for e in where + 0.05 * rng.standard_normal((n, 4)):
            rows.append({column: label, "embedding": e.astype(np.float32)})
    return pd.DataFrame(rows)


def baseline(rng) -> pd.DataFrame:
    val = frame({"cat": 60, "dog": 60, "owl": 60}, rng, column="predicted").assign(split="val")
    train = frame({"cat": 100, "dog": 100, "owl": 100}, rng, column="predicted").assign(split="train")
    return pd.concat([val, train], ignore_index=True)


def test_a_class_moved_to_a_new_region_is_flagged_with_its_own_cluster():
    rng = np.random.default_rng(0)
    log = frame({"cat": 50, "dog": 50, "owl": 50}, rng, column="label", centre={"owl": [0.0, 0.0, 0.0, 1.0]})
    novel = (log["label"] == "owl").to_numpy()  # the novelty score's verdict, per record
    summary, groups = breakdown(baseline(rng), log, novel, DriftSettings(clusters=4), expected_novel=0.01)
    assert summary["flagged_classes"] == ["owl"] and summary["classes"][0]["moved"] > 5
    [cluster] = [c for c in summary["clusters"] if c["flagged"]]
    assert cluster["dominant_labels"] == {"owl": 50} and cluster["n_baseline"] == 0
    assert len(groups.log_clusters) == len(log) and len(groups.baseline_clusters) == 480


def test_the_same_mix_flags_nothing_and_a_vanished_or_unseen_class_is_named():
    rng = np.random.default_rng(1)
    clean = frame({"cat": 50, "dog": 50, "owl": 50}, rng, column="label")
    summary, _ = breakdown(baseline(rng), clean, np.zeros(150, bool), DriftSettings(), expected_novel=0.01)
    assert summary["flagged_classes"] == [] and summary["flagged_clusters"] == []
    other = frame({"cat": 75, "dog": 75}, rng, column="label")
    other.loc[:9, "label"] = "never seen"  # a label the baseline never predicted
    summary, _ = breakdown(baseline(rng), other, np.zeros(150, bool), DriftSettings(), expected_novel=0.01)
    flagged = {c["label"]: c["why"] for c in summary["classes"] if c["flagged"]}
    assert flagged == {"owl": "share changed", "never seen": "share changed"}


def test_a_tiny_log_and_odd_labels_do_not_break_it():
    rng = np.random.default_rng(2)
    log = frame({"cat": 1, "dog": 1}, rng, column="label")
    summary, _ = breakdown(baseline(rng), log, np.ones(2, bool), DriftSettings(clusters=50), expected_novel=0.01)
    assert summary["flagged_classes"] == [] and summary["flagged_clusters"] == []  # too few to flag anything
    names = ["a/b", "a_b", "../..", "", "ok-1.png", "é"]
    assert len({slug(n) for n in names}) == len(names) and all("/" not in slug(n) for n in names)
    assert slug("ok-1.png") == "ok-1.png"
