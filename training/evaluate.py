"""Evaluation: a model over manifest rows through the shared eval transform, metrics, plots.

Review uses the same functions to compare two models, so both are judged identically.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .datasets import load_images


@dataclass
class Predictions:
    logits: np.ndarray  # (n, classes)
    embeddings: np.ndarray  # (n, dim)
    labels: np.ndarray  # (n,) true label indices

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def probabilities(self) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.logits), dim=1).numpy()


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of a float32 NCHW array, in eval mode, in batches."""
    model.eval()
    logits, embeddings = [], []
    for start in range(0, len(images), batch_size):
        out_logits, out_embedding = model(torch.from_numpy(images[start : start + batch_size]))
        logits.append(out_logits.float().numpy())
        embeddings.append(out_embedding.float().numpy())
    return np.concatenate(logits), np.concatenate(embeddings)


def predict_frame(model, frame: pd.DataFrame, raw: Path, spec) -> Predictions:
    logits, embeddings = predict(model, load_images(frame, raw, spec))
    return Predictions(logits, embeddings, frame["label_index"].to_numpy())


def classification_metrics(pred: Predictions, classes: list[str]) -> dict:
    """accuracy, macro_f1, and per-class precision/recall/f1/support."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        pred.labels, pred.predicted, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(pred.labels, pred.predicted)),
        "macro_f1": float(f1_score(pred.labels, pred.predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
    }


def confusion(pred: Predictions, classes: list[str]) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(pred.labels, pred.predicted, labels=list(range(len(classes))))


def _pyplot():
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # files only; a notebook keeps its own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str = "confusion matrix") -> Path:
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)), dpi=110)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if value > matrix.max() / 2 else "black",
        )
    ax.set_xticks(range(n), classes, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_learning_curves(history: pd.DataFrame, path: Path) -> Path:
    """Loss and accuracy per epoch, train against validation."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for column, style in (("train_loss", "-"), ("val_loss", "--")):
        loss_ax.plot(history["epoch"], history[column], style, label=column)
    for column, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
        acc_ax.plot(history["epoch"], history[column], style, label=column)
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.set(title="accuracy", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_dvc_outputs(metrics: dict, matrix_rows: pd.DataFrame, history: pd.DataFrame, metrics_dir: Path) -> None:
    """`metrics/eval.json`, plus CSVs that `dvc plots show` renders (confusion, learning curves)."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "recall": {c: m["recall"] for c, m in metrics["per_class"].items()},
    }
    (metrics_dir / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    matrix_rows.to_csv(metrics_dir / "confusion.csv", index=False)
    history.to_csv(metrics_dir / "learning_curves.csv", index=False)


def prediction_rows(pred: Predictions, classes: list[str]) -> pd.DataFrame:
    """One row per test image: actual and predicted label (DVC's confusion template reads this)."""
    return pd.DataFrame(
        {"actual": [classes[i] for i in pred.labels], "predicted": [classes[i] for i in pred.predicted]}
    )
