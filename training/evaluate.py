"""The evaluation: predictions and metrics of a network on labelled images. One for every stage.

Training evaluates its best checkpoint with it, the review evaluates the challenger and the
champion with it (each through its own preprocessing spec), and anything that needs "how good is
version N on these images" calls `evaluate_version`. The metrics:

| key | what it is |
| --- | --- |
| `accuracy` | share of images whose top prediction is the true label |
| `macro_f1` | F1 averaged over the classes present among the true labels |
| `ece` | expected calibration error: confidence against accuracy in `bins` equal-width bins |
| `per_class` | precision, recall, F1 and support of every true or output class |
| `n_images` | how many images were evaluated |

Labels are compared by name, so two versions with different class lists are judged on the same
images alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .datasets import load_images

CALIBRATION_BINS = 15


@dataclass
class Evaluation:
    """A network's answers on labelled images, and what they are worth."""

    classes: list[str]  # the network's outputs, in order
    labels: list[str]  # the true label of each image
    probabilities: np.ndarray  # (n, classes)
    embeddings: np.ndarray  # (n, dim)
    metrics: dict[str, Any]
    reliability: pd.DataFrame  # calibration table: bin, low, high, count, confidence, accuracy

    @property
    def predicted_index(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.predicted_index]

    @property
    def scores(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


@torch.no_grad()
def predict(network, images: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of a float32 NCHW array, in batches (a trained model is passed in eval mode)."""
    logits, embeddings = [], []
    for start in range(0, len(images), batch_size):
        out_logits, out_embedding = network(torch.from_numpy(images[start : start + batch_size]))
        logits.append(out_logits.float().numpy())
        embeddings.append(out_embedding.float().numpy())
    # A diverged network can emit inf/nan; it must be judged (and fail its gates), not crash.
    logits_array = np.nan_to_num(np.concatenate(logits), nan=0.0, posinf=1e4, neginf=-1e4)
    return logits_array, np.concatenate(embeddings)


def calibration(probabilities: np.ndarray, correct: np.ndarray, bins: int) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and the reliability table (confidence against accuracy per bin)."""
    confidence = probabilities.max(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = [
        {
            "bin": b,
            "low": edges[b],
            "high": edges[b + 1],
            "count": int(mask.sum()),
            "confidence": float(confidence[mask].mean()),
            "accuracy": float(correct[mask].mean()),
        }
        for b in range(bins)
        if (mask := index == b).any()
    ]
    table = pd.DataFrame(rows, columns=["bin", "low", "high", "count", "confidence", "accuracy"])
    ece = float((table["count"] * (table["confidence"] - table["accuracy"]).abs()).sum() / max(len(confidence), 1))
    return ece, table


def classification_metrics(labels: list[str], predicted: list[str], classes: list[str]) -> dict[str, Any]:
    """accuracy, macro_f1 and per-class precision/recall/F1/support, by label name."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    present = sorted(set(labels))
    names = [*classes, *sorted(set(labels) - set(classes))]
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=names, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0)),
        "per_class": {
            n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "n_images": len(labels),
    }


def evaluate(network, images: np.ndarray, labels: list[str], classes: list[str], *, bins: int = CALIBRATION_BINS):
    """The evaluation of `network` (outputs in the order of `classes`) on preprocessed images."""
    logits, embeddings = predict(network, images)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    metrics = classification_metrics(labels, predicted, classes)
    correct = np.array([p == t for p, t in zip(predicted, labels, strict=True)], dtype=bool)
    metrics["ece"], reliability = calibration(probabilities, correct, bins)
    return Evaluation(classes, list(labels), probabilities, embeddings, metrics, reliability)


def labels_of(frame: pd.DataFrame, classes: list[str]) -> list[str]:
    """The true labels of manifest rows: the `label` column, else the names of `label_index`."""
    if "label" in frame:
        return frame["label"].astype(str).tolist()
    return [classes[i] for i in frame["label_index"]]


def evaluate_frame(network, frame: pd.DataFrame, raw: Path, spec, classes: list[str], **kwargs) -> Evaluation:
    """Manifest rows (paths relative to `raw`) through the shared eval transform of `spec`, then `evaluate`."""
    return evaluate(network, load_images(frame, raw, spec), labels_of(frame, classes), classes, **kwargs)


def evaluate_version(version, frame: pd.DataFrame, raw: Path, **kwargs) -> Evaluation:
    """A registered version (`lensops.core.registry.ModelVersion`) on manifest rows, its own preprocessing."""
    return evaluate_frame(version.network(), frame, raw, version.spec, version.classes, **kwargs)


def latency(network, images: np.ndarray, *, repeats: int, batch: int) -> dict[str, float]:
    """Median milliseconds per image at batch 1, and per image in batches of `batch`."""
    one = torch.from_numpy(images[:1])
    many = torch.from_numpy(np.resize(images, (batch, *images.shape[1:])).astype(np.float32))
    with torch.no_grad():
        for _ in range(3):  # warm-up
            network(one)
            network(many)
        single = [_seconds(network, one) for _ in range(repeats)]
        batched = [_seconds(network, many) / batch for _ in range(max(3, repeats // 5))]
    return {
        "batch1_ms": 1000 * float(np.median(single)),
        f"batch{batch}_ms_per_image": 1000 * float(np.median(batched)),
    }


def _seconds(network, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    network(batch)
    return time.perf_counter() - started
