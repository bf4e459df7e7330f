"""Training's and the review's charts: confusion matrices, learning curves, reliability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.figures import pyplot, save

AXES = ("predicted", "true")  # the columns' and the rows' meaning


def _draw_confusion(ax, matrix: np.ndarray, classes: list[str], title: str, fontsize: int = 8, axes=AXES) -> None:
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            colour = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=fontsize, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=90 if len(classes) > 12 else 0, fontsize=fontsize)
    ax.set_yticks(range(len(classes)), classes, fontsize=fontsize)
    ax.set(xlabel=axes[0], ylabel=axes[1], title=title)


def confusion_matrix(labels: Sequence[str], predicted: Sequence[str], classes: list[str]) -> np.ndarray:
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(list(labels), list(predicted), labels=classes)


def plot_confusion(
    matrix: np.ndarray,
    classes: list[str],
    path: Path,
    title: str = "confusion matrix",
    axes: tuple[str, str] = AXES,
) -> Path:
    """One matrix; `axes` names the columns' and the rows' labels."""
    n = len(classes)
    fig, ax = pyplot().subplots(figsize=(max(4, 0.5 * n + 2), max(3.5, 0.5 * n + 1.5)), dpi=110)
    _draw_confusion(ax, matrix, classes, title, axes=axes)
    return save(fig, path)


def plot_confusions(panels: list[tuple[str, np.ndarray]], classes: list[str], path: Path) -> Path:
    """Several confusion matrices side by side (the challenger's and the champion's)."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), dpi=110, squeeze=False)
    for ax, (title, matrix) in zip(axes[0], panels, strict=True):
        _draw_confusion(ax, matrix, classes, title, fontsize=7)
    return save(fig, path)


def plot_learning_curves(history: pd.DataFrame, path: Path) -> Path:
    """Loss and accuracy per epoch, train against validation."""
    fig, (loss_ax, acc_ax) = pyplot().subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for column, style in (("train_loss", "-"), ("val_loss", "--")):
        loss_ax.plot(history["epoch"], history[column], style, label=column)
    for column, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
        acc_ax.plot(history["epoch"], history[column], style, label=column)
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.set(title="accuracy", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    return save(fig, path)


def plot_reliability(curves: list[tuple[str, pd.DataFrame]], path: Path) -> Path:
    """Confidence against accuracy per bin, one line per model, beside the diagonal."""
    fig, ax = pyplot().subplots(figsize=(4.6, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for label, table in curves:
        if len(table):
            ax.plot(table["confidence"], table["accuracy"], "o-", label=label)
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)
