"""The `review` section of `params.yaml`: what a challenger is measured on, and the gates it must pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from .sections import Section


def _default_robustness() -> list[dict[str, dict[str, Any]]]:
    """Perturbations of the test split a model should withstand (each drawn the same for every version)."""
    return [
        {"GaussianBlur": {"blur_limit": [5, 5], "p": 1}},
        {"RandomBrightnessContrast": {"brightness_limit": [-0.3, -0.3], "contrast_limit": [0, 0], "p": 1}},
        {"Rotate": {"limit": [20, 20], "p": 1}},
        {"GaussNoise": {"std_range": [0.1, 0.1], "p": 1}},
        {"ImageCompression": {"quality_range": [20, 20], "p": 1}},
    ]


class GateSettings(Section):
    """Thresholds a challenger must meet; a null threshold turns its gate off."""

    min_accuracy: float | None = Field(0.9, ge=0, le=1, description="absolute: test accuracy at least this")
    max_ece: float | None = Field(None, ge=0, le=1, description="absolute: expected calibration error at most this")
    max_accuracy_drop: float | None = Field(0.01, ge=0, le=1, description="against the champion")
    max_class_recall_drop: float | None = Field(0.05, ge=0, le=1, description="against the champion, any class")
    max_latency_ratio: float | None = Field(1.5, gt=0, description="challenger/champion batched latency")
    max_slice_drop: float | None = Field(
        0.05, ge=0, le=1, description="against the champion: accuracy drop on any slice the champion was good at"
    )
    max_robustness_drop: float | None = Field(0.1, ge=0, le=1, description="against the champion, any robustness check")
    min_live_records: float | None = Field(
        100, ge=1, description="live (--live): shadowed requests needed before the other live gates judge"
    )
    min_live_agreement: float | None = Field(0.9, ge=0, le=1, description="live: share answered alike")
    max_live_class_disagreement: float | None = Field(
        0.2, ge=0, le=1, description="live: share disagreed with among any class the champion answered"
    )
    max_live_accuracy_drop: float | None = Field(
        0.02, ge=0, le=1, description="live: on labelled shadowed requests, accuracy below the champion's"
    )


class ReviewSettings(Section):
    report_dir: Path = Path("reports/review")
    latency_repeats: int = Field(30, ge=1, description="timed forwards per latency figure")
    latency_batch: int = Field(64, ge=1)
    calibration_bins: int = Field(15, ge=2)
    max_disagreements_shown: int = Field(32, ge=0)
    slices: list[str] = Field(
        default_factory=lambda: ["source"], description="manifest or provenance columns whose values become slices"
    )
    slice_min_images: int = Field(10, ge=1, description="smaller slices are reported, never gated")
    gate_min_images: int = Field(
        3, ge=1, description="a class or slice drop that loses fewer images than this is noise, never a hold"
    )
    slice_good_accuracy: float = Field(0.8, ge=0, le=1, description="a slice the champion is good at: at least this")
    robustness: list[dict[str, dict[str, Any]]] = Field(
        default_factory=_default_robustness, description="albumentations transforms, one check each"
    )
    live_required: bool = Field(
        False, description="--live without min_live_records shadowed requests holds (otherwise it is only reported)"
    )
    gates: GateSettings = Field(default_factory=GateSettings)
