"""The promotion gates: one function per threshold in `review.gates`, each judged on plain numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from lensops.core.review_sections import GateSettings, ReviewSettings
from training.gates import GATES, apply_gates


@dataclass
class Model:
    accuracy: float
    recalls: dict[str, float]
    ece: float = 0.05
    batched_ms: float = 1.0
    slices: dict = field(default_factory=dict)
    robustness: dict = field(default_factory=dict)
    live: dict | None = None
    metrics: dict = field(init=False)
    latency: dict = field(init=False)

    def __post_init__(self):
        per_class = {k: {"recall": r, "support": 40} for k, r in self.recalls.items()}
        self.metrics = {"accuracy": self.accuracy, "ece": self.ece, "per_class": per_class}
        self.latency = {"batch64_ms_per_image": self.batched_ms}


def test_every_threshold_has_its_gate_and_every_gate_its_threshold():
    assert list(GATES) == list(GateSettings.model_fields)


def test_without_a_champion_only_the_absolute_gates_apply():
    gates = apply_gates(ReviewSettings(), Model(0.95, {"a": 1.0}), None)
    assert [g.name for g in gates] == ["min_accuracy"] and gates[0].passed


def test_each_relative_gate_names_what_failed():
    cfg = ReviewSettings.model_validate({"gates": {"max_ece": 0.1}})
    champion = Model(0.97, {"a": 0.99, "b": 0.95}, batched_ms=1.0)
    challenger = Model(0.93, {"a": 0.99, "b": 0.80}, ece=0.2, batched_ms=2.0)
    gates = {g.name: g for g in apply_gates(cfg, challenger, champion)}
    assert list(gates) == [
        "min_accuracy",
        "max_ece",
        "max_accuracy_drop",
        "max_class_recall_drop",
        "max_latency_ratio",
        "max_slice_drop",
    ]
    assert gates["min_accuracy"].passed and not gates["max_ece"].passed
    assert not gates["max_accuracy_drop"].passed and round(gates["max_accuracy_drop"].value, 4) == 0.04
    assert not gates["max_class_recall_drop"].passed and gates["max_class_recall_drop"].detail == "class b"
    assert not gates["max_latency_ratio"].passed and gates["max_latency_ratio"].value == 2.0


def test_a_drop_exactly_at_the_threshold_passes():
    cfg = ReviewSettings.model_validate({"gates": {"max_accuracy_drop": 0.01}})
    gates = {g.name: g for g in apply_gates(cfg, Model(0.94, {"a": 1.0}), Model(0.95, {"a": 1.0}))}
    assert gates["max_accuracy_drop"].passed


def test_a_null_threshold_turns_its_gate_off():
    cfg = ReviewSettings.model_validate(
        {"gates": {"max_latency_ratio": None, "max_class_recall_drop": None, "max_slice_drop": None}}
    )
    names = [g.name for g in apply_gates(cfg, Model(0.95, {"a": 1.0}), Model(0.95, {"a": 1.0}))]
    assert names == ["min_accuracy", "max_accuracy_drop"]


def test_the_slice_gate_holds_a_challenger_that_regresses_on_a_slice_the_champion_was_good_at():
    cfg = ReviewSettings(slice_min_images=10, slice_good_accuracy=0.8)
    old_slices = {
        "source=original": {"n": 200, "accuracy": 0.98},
        "source=production": {"n": 40, "accuracy": 0.40},  # the champion was bad here: not gated
        "source=tiny": {"n": 3, "accuracy": 1.0},  # too few images: reported, never gated
    }
    new_slices = {
        "source=original": {"n": 200, "accuracy": 0.90},
        "source=production": {"n": 40, "accuracy": 0.95},
        "source=tiny": {"n": 3, "accuracy": 0.0},
    }
    champion, challenger = Model(0.93, {"a": 1.0}, slices=old_slices), Model(0.91, {"a": 1.0}, slices=new_slices)
    gate = {g.name: g for g in apply_gates(cfg, challenger, champion)}["max_slice_drop"]
    assert not gate.passed and gate.detail == "slice source=original" and round(gate.value, 2) == 0.08
    better = Model(0.97, {"a": 1.0}, slices={**new_slices, "source=original": {"n": 200, "accuracy": 0.97}})
    assert {g.name: g for g in apply_gates(cfg, better, champion)}["max_slice_drop"].passed


def test_a_drop_of_fewer_images_than_gate_min_images_is_noise_not_a_hold():
    """Class 3 of a 34-image class loses 2 images (5.9 points): noise at gate_min_images=3, a hold at 2."""
    champion = Model(0.9, {"3": 1.0, "5": 0.9})
    challenger = Model(0.97, {"3": 32 / 34, "5": 0.9})
    for m in (champion, challenger):
        m.metrics["per_class"]["3"]["support"] = 34
    noisy = {g.name: g for g in apply_gates(ReviewSettings(), challenger, champion)}["max_class_recall_drop"]
    assert noisy.passed and "noise" in noisy.detail and round(noisy.value, 3) == 0.059
    strict = ReviewSettings(gate_min_images=2)
    held = {g.name: g for g in apply_gates(strict, challenger, champion)}["max_class_recall_drop"]
    assert not held.passed and held.detail == "class 3"


def test_the_robustness_gate_holds_a_challenger_that_breaks_under_a_perturbation_the_champion_withstands():
    cfg = ReviewSettings()  # max_robustness_drop 0.1, gate_min_images 3
    rotate, blur = "Rotate(limit=[30, 30], p=1)", "GaussianBlur(blur_limit=[5, 5], p=1)"
    champion = Model(
        0.95, {"a": 1.0}, robustness={rotate: {"n": 80, "accuracy": 0.9}, blur: {"n": 80, "accuracy": 0.8}}
    )
    steady = Model(0.95, {"a": 1.0}, robustness={rotate: {"n": 80, "accuracy": 0.85}, blur: {"n": 80, "accuracy": 0.9}})
    broken = Model(0.95, {"a": 1.0}, robustness={rotate: {"n": 80, "accuracy": 0.5}, blur: {"n": 80, "accuracy": 0.9}})
    judged = {name: {g.name: g for g in apply_gates(cfg, model, champion)}["max_robustness_drop"]
              for name, model in (("steady", steady), ("broken", broken))}  # fmt: skip
    assert judged["steady"].passed and round(judged["steady"].value, 4) == 0.05
    assert not judged["broken"].passed and judged["broken"].detail == f"check {rotate}"
    assert round(judged["broken"].value, 4) == 0.4
    without = apply_gates(
        cfg, broken, Model(0.95, {"a": 1.0})
    )  # a champion reviewed without checks: nothing to compare
    assert "max_robustness_drop" not in [g.name for g in without]


def _live(n: int, per_class: dict[str, tuple[int, float]], labelled=(0, 0.0, 0.0)) -> dict:
    """Live evidence as `training.live_review.live_evidence` gives it: per class (requests, agreement)."""
    agreement = sum(k * a for k, a in per_class.values()) / max(n, 1)
    return {
        "n": n,
        "agreement": agreement,
        "per_class": {c: {"n": k, "agreement": a, "disagreement": 1 - a} for c, (k, a) in per_class.items()},
        "labelled": {"n": labelled[0], "champion_accuracy": labelled[1], "challenger_accuracy": labelled[2]},
    }


def test_the_live_gates_hold_a_challenger_that_disagrees_within_a_class_or_loses_live_accuracy():
    cfg = ReviewSettings()  # min 100 records, agreement 0.9, class disagreement 0.2, accuracy drop 0.02
    champion = Model(0.95, {"a": 1.0})

    def judged(live):
        return {g.name: g for g in apply_gates(cfg, Model(0.95, {"a": 1.0}, live=live), champion)}

    alike = judged(_live(300, {"1": (100, 1.0), "7": (100, 0.99), "4": (100, 0.98)}, labelled=(40, 0.9, 0.9)))
    assert all(alike[name].passed for name in ("min_live_records", "min_live_agreement", "max_live_accuracy_drop"))
    assert alike["max_live_class_disagreement"].passed
    # Two classes swapped: overall agreement is still 1/3, and the worst class is named.
    swapped = judged(_live(300, {"1": (100, 0.0), "7": (100, 0.0), "4": (100, 1.0)}))
    assert not swapped["min_live_agreement"].passed and not swapped["max_live_class_disagreement"].passed
    assert swapped["max_live_class_disagreement"].detail in ("class 1", "class 7")
    assert "max_live_accuracy_drop" not in swapped  # no labelled request: nothing to judge
    worse = judged(_live(300, {"1": (300, 1.0)}, labelled=(50, 0.96, 0.9)))
    assert not worse["max_live_accuracy_drop"].passed and round(worse["max_live_accuracy_drop"].value, 4) == 0.06
    assert list(judged(None)) == ["min_accuracy", "max_accuracy_drop", "max_class_recall_drop",
                                  "max_latency_ratio", "max_slice_drop"]  # fmt: skip


def test_too_few_live_records_hold_only_when_live_evidence_is_required():
    few = Model(0.95, {"a": 1.0}, live=_live(12, {"1": (12, 0.0)}))
    optional = {g.name: g for g in apply_gates(ReviewSettings(), few, Model(0.95, {"a": 1.0}))}
    assert optional["min_live_records"].passed and "skipped" in optional["min_live_records"].detail
    assert "min_live_agreement" not in optional  # twelve requests judge nothing
    required = ReviewSettings.model_validate({"live_required": True})
    gates = {g.name: g for g in apply_gates(required, few, Model(0.95, {"a": 1.0}))}
    assert not gates["min_live_records"].passed and gates["min_live_records"].value == 12
