"""The built-in demo dataset: scikit-learn's handwritten digits written out as PNG files.

`load_digits` ships inside scikit-learn, so the demo needs no download. Its 8x8 images with
17 grey levels are upscaled to `size` x `size` so that ordinary convolutional models, and the
same preprocessing a user's own photos get, apply unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: Path, *, size: int = 32) -> dict[str, int]:
    """Write every digit as `out/<digit>/digit_<index>.png`; returns images per class.

    Deterministic: the same `size` gives byte-identical files. Existing files with other
    names are left untouched.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[str, int] = {}
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = str(int(target))
        grey = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"digit_{index:04d}.png", optimize=False)
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
