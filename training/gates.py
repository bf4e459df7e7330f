"""The promotion gates: one small function per gate, named as its threshold in `review.gates`.

A gate takes the challenger, the champion (None when there is none yet), its threshold and the
review settings, and returns a `Gate` (value, threshold, passed, detail), or None when it does
not apply (a gate against the champion, with no champion). `apply_gates` runs every gate whose
threshold in `params.yaml` is not null, in the order `review.gates` lists them.

Adding a gate: write its function here with `@gate`, and give its threshold a line in
`params.yaml` (and a typed field in `lensops.core.review_sections.GateSettings`, which rejects unknown
keys). `tests/unit/test_gates.py` checks that the two lists match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from lensops.core.review_sections import ReviewSettings

EPSILON = 1e-12  # a drop exactly at the threshold passes despite float rounding


class Contender(Protocol):
    """What a gate reads of a model under review (see `training.review.Contender`)."""

    metrics: dict[str, Any]
    latency: dict[str, float]
    slices: dict[str, dict[str, float]]  # "source=production" -> {n, accuracy}
    robustness: dict[str, dict[str, Any]]  # "Rotate(limit=[30, 30])" -> {n, accuracy, recall}
    live: dict[str, Any] | None  # the challenger's shadowed traffic (`training.live_review`), with --live


@dataclass
class Gate:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str = ""


GateFunction = Callable[[Contender, Contender | None, float, ReviewSettings], Gate | None]
GATES: dict[str, GateFunction] = {}


def gate(function: GateFunction) -> GateFunction:
    GATES[function.__name__] = function
    return function


@gate
def min_accuracy(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate:
    """Absolute: the challenger's test accuracy is at least the threshold."""
    value = new.metrics["accuracy"]
    return Gate("min_accuracy", value, threshold, value >= threshold)


@gate
def max_ece(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate:
    """Absolute: the challenger's expected calibration error is at most the threshold."""
    value = new.metrics["ece"]
    return Gate("max_ece", value, threshold, value <= threshold)


@gate
def max_accuracy_drop(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Against the champion: accuracy falls by at most the threshold."""
    if old is None:
        return None
    drop = old.metrics["accuracy"] - new.metrics["accuracy"]
    return Gate("max_accuracy_drop", drop, threshold, drop <= threshold + EPSILON)


@gate
def max_class_recall_drop(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Against the champion: no class's recall falls by more than the threshold (the worst is named)."""
    if old is None:
        return None
    theirs, ours = old.metrics["per_class"], new.metrics["per_class"]
    drops = {
        k: (m["recall"] - ours.get(k, {"recall": 0.0})["recall"], m["support"])
        for k, m in theirs.items()
        if m["support"]
    }
    return _worst_drop("max_class_recall_drop", "class", drops, threshold, cfg.gate_min_images)


def _worst_drop(name: str, kind: str, drops: dict[str, tuple[float, int]], threshold: float, min_images: int) -> Gate:
    """The worst drop among those that lost at least `min_images` images; smaller ones are noise, named as such.

    On a test split of a few dozen images per class, one or two images decide a 5-point drop: a
    gate that fails on that holds good challengers at random.
    """
    significant = {k: d for k, (d, n) in drops.items() if d * n >= min_images - EPSILON}
    candidates = significant or {k: d for k, (d, _) in drops.items()}
    if not candidates:
        return Gate(name, 0.0, threshold, True, f"no {kind} to compare")
    worst = max(candidates, key=candidates.get)
    value = candidates[worst]
    passed = value <= threshold + EPSILON or worst not in significant
    noise = "" if worst in significant or value <= threshold else f" (fewer than {min_images} images: noise)"
    return Gate(name, value, threshold, passed, f"{kind} {worst}{noise}")


@gate
def max_latency_ratio(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Against the champion: batched latency per image at most the threshold times the champion's."""
    if old is None:
        return None
    key = f"batch{cfg.latency_batch}_ms_per_image"
    ratio = new.latency[key] / max(old.latency[key], 1e-9)
    return Gate("max_latency_ratio", ratio, threshold, ratio <= threshold, "batched, per image")


@gate
def max_slice_drop(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Against the champion: no slice the champion was good at (`review.slice_good_accuracy`, with at least
    `review.slice_min_images` images) loses more than the threshold of accuracy (the slice is named)."""
    if old is None:
        return None
    drops = {
        name: (s["accuracy"] - new.slices.get(name, {"accuracy": 0.0})["accuracy"], s["n"])
        for name, s in old.slices.items()
        if s["n"] >= cfg.slice_min_images and s["accuracy"] >= cfg.slice_good_accuracy
    }
    if not drops:
        return Gate("max_slice_drop", 0.0, threshold, True, "no slice the champion was good at")
    return _worst_drop("max_slice_drop", "slice", drops, threshold, cfg.gate_min_images)


@gate
def max_robustness_drop(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Against the champion: under no `review.robustness` check does accuracy fall more than the threshold below
    the champion's under the same check (the check is named)."""
    if old is None or not old.robustness:
        return None
    drops = {
        name: (r["accuracy"] - new.robustness.get(name, {"accuracy": 0.0})["accuracy"], r["n"])
        for name, r in old.robustness.items()
    }
    return _worst_drop("max_robustness_drop", "check", drops, threshold, cfg.gate_min_images)


@gate
def min_live_records(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Live (--live): enough shadowed requests for the other live gates to judge. Too few holds only when
    `review.live_required`; otherwise the gate passes, says so, and the other live gates stay out."""
    if new.live is None:
        return None
    n = new.live["n"]
    if n >= threshold:
        return Gate("min_live_records", n, threshold, True)
    required = cfg.live_required
    detail = f"only {n} shadowed requests" + ("" if required else ": live gates skipped (review.live_required false)")
    return Gate("min_live_records", n, threshold, not required, detail)


def _judged(new: Contender, cfg: ReviewSettings) -> dict[str, Any] | None:
    """The live evidence, if there is enough of it to judge."""
    live = new.live
    enough = cfg.gates.min_live_records or 1
    return live if live is not None and live["n"] >= enough else None


@gate
def min_live_agreement(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Live: the share of shadowed requests both versions answered alike is at least the threshold."""
    if (live := _judged(new, cfg)) is None:
        return None
    return Gate("min_live_agreement", live["agreement"], threshold, live["agreement"] >= threshold - EPSILON)


@gate
def max_live_class_disagreement(
    new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings
) -> Gate | None:
    """Live: within no class the champion answered does the challenger disagree on more than the threshold
    (the class is named; a class where fewer than `review.gate_min_images` requests disagree is noise)."""
    if (live := _judged(new, cfg)) is None:
        return None
    rates = {k: (c["disagreement"], c["n"]) for k, c in live["per_class"].items()}
    return _worst_drop("max_live_class_disagreement", "class", rates, threshold, cfg.gate_min_images)


@gate
def max_live_accuracy_drop(new: Contender, old: Contender | None, threshold: float, cfg: ReviewSettings) -> Gate | None:
    """Live: on the shadowed requests people have labelled, accuracy at most the threshold below the champion's."""
    if (live := _judged(new, cfg)) is None or not live["labelled"]["n"]:
        return None
    labelled = live["labelled"]
    drop = labelled["champion_accuracy"] - labelled["challenger_accuracy"]
    return Gate("max_live_accuracy_drop", drop, threshold, drop <= threshold + EPSILON, f"{labelled['n']} labelled")


def apply_gates(cfg: ReviewSettings, challenger: Contender, champion: Contender | None) -> list[Gate]:
    """Every gate whose threshold is set, in the order of `review.gates`; those that do not apply are left out."""
    results = []
    for name, threshold in cfg.gates.model_dump().items():
        if threshold is not None and (result := GATES[name](challenger, champion, threshold, cfg)) is not None:
            results.append(result)
    return results
