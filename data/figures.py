"""What every chart of every stage needs: pyplot without a display, saving, and grids of images.

Stages draw their own charts (training's confusion matrices, monitoring's drift grids); they get
matplotlib from here, so that a file is written the same way everywhere and a notebook keeps its
own backend.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot, on the file-only Agg backend unless a notebook already chose one."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write a figure as PNG (folders created) and release it."""
    plt = pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class Tile:
    """One image of a grid and the caption under it."""

    image: object  # a PIL image, an HWC array, or a path to an image file
    caption: str


def image_grid(tiles: Sequence[Tile], path: Path, *, title: str = "", columns: int = 8) -> Path:
    """Images in a grid with a caption each, saved as PNG (an empty grid says so)."""
    plt = pyplot()
    cols = max(1, min(columns, len(tiles)))
    rows = max(1, int(np.ceil(len(tiles) / cols)))
    width = max(1.6 * cols, 0.07 * len(title))  # wide enough for the title over a few tiles
    fig, axes = plt.subplots(rows, cols, figsize=(width, 1.9 * rows + 0.4), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(_pixels(tile.image), cmap="gray")
        ax.set_title(tile.caption, fontsize=6)
    if not tiles:
        axes[0][0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return save(fig, path)


def _pixels(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, str | Path):
        try:
            with Image.open(image) as opened:
                return np.asarray(opened.convert("RGB"))
        except (OSError, ValueError):  # a file that no longer decodes shows as a blank tile
            return np.zeros((8, 8, 3), np.uint8)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)
