"""`review.robustness`: accuracy on the test split under each listed perturbation, for every version under review.

Each entry of `review.robustness` is one albumentations transform, written as in `train.augment`
(`{Rotate: {limit: [30, 30], p: 1}}`), applied alone to the resized test images before the
normalisation, exactly where training applies its augmentation. Every image's draw comes from its
own seed, `(review seed, check, row)`, so the challenger and the champion are judged on the very
same perturbed images, and a review repeated gives the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.transforms import build_augmentation

from .datasets import DecodeBatch
from .evaluate import evaluate, labels_of

SEED = 0  # the perturbations are part of the review's definition, not a random draw per review


def check_name(step: dict[str, Any]) -> str:
    """`{Rotate: {limit: [30, 30], p: 1}}` -> `Rotate(limit=[30, 30], p=1)`: the key in reports and gates."""
    ((name, args),) = step.items()
    return f"{name}({', '.join(f'{k}={json.dumps(v)}' for k, v in (args or {}).items())})"


def validate(steps: list[dict[str, Any]]) -> None:
    """Every transform built once, so that a typo fails the review before any evaluation."""
    build_augmentation(steps, where="review.robustness")


def robustness(network, spec, classes: list[str], test: pd.DataFrame, raw: Path, steps: list[dict]) -> dict[str, dict]:
    """{check name: {n, accuracy, recall: {class: recall}}} of one network on the perturbed test split."""
    labels = labels_of(test, classes)
    results = {}
    for i, step in enumerate(steps):
        decoder = DecodeBatch(str(raw), spec.model_dump(), [step], seed=SEED)
        images = np.stack([decoder.image(p, sample=(i, row)) for row, p in enumerate(test["path"])])
        metrics = evaluate(network, images.astype(np.float32), labels, classes).metrics
        recall = {c: m["recall"] for c, m in metrics["per_class"].items() if m["support"]}
        results[check_name(step)] = {"n": len(labels), "accuracy": metrics["accuracy"], "recall": recall}
    return results
