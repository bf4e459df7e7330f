"""Charts of the data stage, saved as PNG next to the reports (and declared as DVC plots)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def _figure(n_classes: int):
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # files only; a notebook keeps its own backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = min(16.0, max(5.0, 0.45 * n_classes + 2))
    return plt, *plt.subplots(figsize=(width, 3.6), dpi=110)


def _finish(ax, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_ylabel("images")
    ax.set_title(title)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the bars, never over them
    ax.tick_params(axis="x", labelrotation=90 if len(ax.get_xticks()) > 12 else 0)


def plot_class_health(
    class_counts: dict[str, int], bad_per_class: dict[str, int], path: Path, *, minimum: int | None = None
) -> Path:
    """Valid and bad images per class, with the per-class minimum as a line."""
    labels = sorted(set(class_counts) | set(bad_per_class))
    plt, fig, ax = _figure(len(labels))
    valid = [class_counts.get(c, 0) for c in labels]
    bad = [bad_per_class.get(c, 0) for c in labels]
    ax.bar(labels, valid, color="#4c72b0", label="valid")
    ax.bar(labels, bad, bottom=valid, color="#dd5555", label="bad")
    if minimum is not None:
        ax.axhline(minimum, color="black", linestyle="--", linewidth=1, label=f"minimum ({minimum})")
    _finish(ax, "images per class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_splits(prepared: pd.DataFrame, path: Path) -> Path:
    """Images per class in each split, stacked."""
    table = prepared.groupby(["label", "split"]).size().unstack(fill_value=0)
    table = table.reindex(columns=[s for s in ("train", "val", "test") if s in table.columns])
    plt, fig, ax = _figure(len(table))
    bottom = None
    for split, color in zip(table.columns, ("#4c72b0", "#55a868", "#c44e52"), strict=False):
        ax.bar(table.index, table[split], bottom=bottom, color=color, label=split)
        bottom = table[split] if bottom is None else bottom + table[split]
    _finish(ax, "split sizes per class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_augmentations(rows: list[tuple[str, list]], path: Path) -> Path:
    """A grid: each row one image, first as the model sees it at evaluation, then augmented.

    `rows` is [(title, [uint8 HWC arrays, original first])].
    """
    n_cols = max(len(images) for _, images in rows)
    plt, fig, axes = _figure(1)
    plt.close(fig)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols, 1.4 * len(rows)), dpi=110, squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
        axes[r][0].set_title(title, fontsize=8, loc="left")
    axes[0][1].set_title("augmented →", fontsize=8, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_quality(manifest: pd.DataFrame, quality, path: Path) -> Path:
    """Brightness, contrast, blur, aspect ratio (box plots) and colour modes (stacked bars) per class.

    `quality` is the `validate.quality` settings: their thresholds are drawn as dashed lines.
    """
    labels = sorted(manifest["label"].dropna().unique())
    plt, fig, _ = _figure(1)
    plt.close(fig)
    width = min(18.0, max(9.0, 0.5 * len(labels) * 3 + 3))
    fig, axes = plt.subplots(2, 3, figsize=(width, 6.4), dpi=110)
    low, high = quality.aspect_ratio_range
    panels = [
        ("brightness", "brightness (mean grey)", [quality.dark_below, quality.bright_above], False),
        ("contrast", "contrast (grey std)", [quality.low_contrast_below], False),
        ("blur", "sharpness (variance of Laplacian)", [quality.blur_below], True),
        ("aspect_ratio", "aspect ratio (width / height)", [low, high], True),
    ]
    for ax, (column, title, lines, log) in zip(axes.flat, panels, strict=False):
        values = [manifest.loc[manifest["label"] == c, column].dropna().astype(float).to_numpy() for c in labels]
        if log:
            values = [v[v > 0] for v in values]
            ax.set_yscale("log")
        ax.boxplot(values, showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=90 if len(labels) > 12 else 0)
        for y in lines:
            if not log or y > 0:
                ax.axhline(y, color="#dd5555", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
    modes = manifest.groupby(["label", "mode"]).size().unstack(fill_value=0).reindex(labels, fill_value=0)
    ax, bottom = axes.flat[4], None
    for mode in modes.columns:
        ax.bar(modes.index, modes[mode], bottom=bottom, label=str(mode))
        bottom = modes[mode] if bottom is None else bottom + modes[mode]
    ax.set_title("colour modes", fontsize=9)
    if len(modes.columns):
        ax.legend(fontsize=7, frameon=False)
    axes.flat[5].axis("off")
    axes.flat[5].text(0, 0.5, "dashed: thresholds in\nvalidate.quality", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
