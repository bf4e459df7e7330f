"""The built-in demo dataset: scikit-learn's handwritten digits written out as PNG files.

`load_digits` ships inside scikit-learn, so the demo needs no download. Its 8x8 images with
17 grey levels are upscaled to `size` x `size` so that ordinary convolutional models, and the
same preprocessing a user's own photos get, apply unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lensops.core.errors import UsageError


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


def flip_labels(raw: Path, n: int, *, seed: int = 0, max_distance: int = 4) -> dict[str, tuple[str, str]]:
    """Mislabel `n` random images on purpose: each moves to another, random class folder.

    For measuring an audit: returns new path -> (true label, given label). Images with a near
    copy (pHash within `max_distance`, validation's rule) are never picked: validation would
    already refuse that flip, as the same picture under two labels.
    """
    from .near_duplicates import near_groups
    from .quality import grey_image, perceptual_hash

    paths = sorted(p for p in Path(raw).glob("*/*") if p.is_file() and not p.name.startswith("."))
    labels = sorted({p.parent.name for p in paths})
    hashes = []
    for path in paths:
        with Image.open(path) as image:
            hashes.append(perceptual_hash(grey_image(image)))
    groups = near_groups(hashes, max_distance)
    sizes = np.bincount(groups)
    alone = [p for p, g in zip(paths, groups, strict=True) if sizes[g] == 1]
    if len(alone) < n:
        raise UsageError(f"only {len(alone)} images of {raw} have no near copy; cannot flip {n}")
    rng = np.random.default_rng(seed)
    flipped = {}
    for i in sorted(rng.choice(len(alone), size=n, replace=False)):
        path = alone[i]
        given = str(rng.choice([c for c in labels if c != path.parent.name]))
        target = Path(raw) / given / path.name
        path.rename(target)
        flipped[f"{given}/{path.name}"] = (path.parent.name, given)
    return flipped


# --- demo traffic: the held-out images as production would send them, optionally shifted -------

SHIFTED_PREFIX = "shifted_"


SHIFTS = ("scanner", "inverted")


def shift_transform(seed: int, kind: str = "scanner"):
    """A distribution shift for the demo.

    - `scanner`: a new scanner that blurs, darkens, flattens and tilts the digits (the shift the
      demo labels and retrains on);
    - `inverted`: dark ink on a light page, slightly tilted and blurred (a shift no training data
      covers, for the drift that must still alarm after retraining).
    """
    import albumentations as A

    if kind not in SHIFTS:
        raise UsageError(f"unknown shift {kind!r}; choose one of {', '.join(SHIFTS)}")
    if kind == "inverted":
        steps = [A.InvertImg(p=1.0), A.Affine(rotate=(-15, 15), p=1.0), A.GaussianBlur(blur_limit=(3, 3), p=0.5)]
    else:
        steps = [
            A.Affine(rotate=(-30, 30), scale=(0.8, 0.95), p=1.0),
            A.GaussianBlur(blur_limit=(3, 5), p=1.0),
            A.RandomBrightnessContrast(brightness_limit=(-0.35, -0.2), contrast_limit=(-0.5, -0.3), p=1.0),
            A.GaussNoise(std_range=(0.04, 0.08), p=1.0),
        ]
    return A.Compose(steps, seed=seed)


def write_traffic(
    prepared: Path,
    out: Path,
    *,
    splits: tuple[str, ...] = ("test",),
    shift: bool | str = False,
    seed: int = 0,
) -> dict[str, int]:
    """Write the original images of `splits` of a prepared dataset as `out/<label>/<name>.png`.

    With `shift` (True for `scanner`, or a kind of `SHIFTS`), each image goes through
    `shift_transform(seed, kind)` and is named with the `shifted_` prefix. Images that came from
    production (provenance `source`) are left out: traffic is made from the original data only.
    Deterministic for a given seed. Returns images per class.
    """
    from .prepare import load_prepared
    from .transforms import decode, to_rgb

    manifest, _, raw = load_prepared(prepared)
    unknown = sorted(set(splits) - set(manifest["split"]))
    if unknown:
        raise UsageError(f"no split named {', '.join(unknown)} in {prepared}; have {sorted(set(manifest['split']))}")
    rows = manifest[manifest["split"].isin(splits)].sort_values("path")
    if "source" in rows:
        rows = rows[rows["source"] == "original"]
    transform = shift_transform(seed, "scanner" if shift is True else shift) if shift else None
    counts: dict[str, int] = {}
    for path, label in zip(rows["path"], rows["label"], strict=True):
        image = to_rgb(decode((raw / path).read_bytes()))
        name = Path(path).stem
        if transform is not None:
            image = Image.fromarray(transform(image=np.asarray(image))["image"])
            name = SHIFTED_PREFIX + name
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.convert("L").save(folder / f"{name}.png")
        counts[str(label)] = counts.get(str(label), 0) + 1
    return dict(sorted(counts.items()))
