"""The one preprocessing, and the training augmentation.

A `PreprocessingSpec` (input size, resize rule, interpolation, mean/std) is stored with every
registered model version. `eval_transform(spec)` is the only place that turns it into a
transform: training's validation, evaluation, review, serving and monitoring all call it, so
nothing re-declares a resize or a mean/std.

Every image first goes through `to_rgb`: EXIF orientation applied, any mode (greyscale,
16-bit, palette with transparency, CMYK, RGBA) made 8-bit RGB. The augmentation is an
albumentations pipeline declared in params.yaml; it runs on the resized uint8 image, between
the shared resize and the shared normalisation, so training sees exactly the geometry and
scaling that serving will.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from lensops.core.errors import UsageError
from lensops.core.settings import KNOWN_FORMATS, PreprocessingSpec

from .images import ImageLimits, decode_image, to_rgb
from .pixels import image_stats, normalize, resize

__all__ = [
    "EvalTransform",
    "PreprocessingSpec",
    "build_augmentation",
    "decode",
    "eval_transform",
    "image_stats",
    "to_rgb",
    "train_transform",
]


class AugmentationError(UsageError):
    """An augmentation in params.yaml names an unknown transform or argument, or a bad value."""


class EvalTransform:
    """The evaluation transform of one spec: any PIL image -> float32 tensor (3, size, size).

    `from_rgb` skips `to_rgb` for an image that already went through it (serving and replay
    keep the upright RGB image for its stats too, so it is converted once).
    """

    def __init__(self, spec: PreprocessingSpec):
        self.spec = spec

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.from_rgb(to_rgb(image))

    def from_rgb(self, rgb: Image.Image) -> torch.Tensor:
        pixels = np.asarray(resize(rgb, self.spec), dtype=np.uint8)
        return torch.from_numpy(normalize(pixels, self.spec))


def eval_transform(spec: PreprocessingSpec) -> EvalTransform:
    """The evaluation transform: any PIL image -> float32 tensor (3, size, size)."""
    return EvalTransform(spec)


# Files that validation accepted: any format lensops knows, no size limits (they were applied then).
_TRUSTED = ImageLimits.of(KNOWN_FORMATS, max_bytes=2**62, max_pixels=2**62, max_frames=2**31, max_scans=2**31)


def decode(data: bytes) -> Image.Image:
    """Bytes of a validated file -> its first frame, loaded, by the shared decoder, in this process.

    Raises `data.images.ImageRejected` (a ValueError) on bytes that do not decode.
    """
    return decode_image(data, _TRUSTED).image


# --- augmentation ----------------------------------------------------------------------------


def _albumentations_transforms() -> dict[str, type]:
    import albumentations as A

    return {
        name: obj
        for name in dir(A)
        if not name.startswith("_")
        and isinstance(obj := getattr(A, name), type)
        and issubclass(obj, A.BasicTransform)
        and name not in ("BasicTransform", "DualTransform", "ImageOnlyTransform", "NoOp")
    }


def _closest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(options))}"


def build_augmentation(steps: Sequence[dict[str, Any]], *, where: str = "train.augment"):
    """An albumentations Compose from params: a list of `{TransformName: {argument: value}}`.

    Unknown transforms and arguments are errors naming the nearest valid one (albumentations
    itself only warns about unknown arguments, which would silently train without them).
    """
    import albumentations as A

    known = _albumentations_transforms()
    transforms = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or len(step) != 1:
            raise AugmentationError(f"{where}[{i}]: expected one {{TransformName: {{args}}}}, got {step!r}")
        ((name, args),) = step.items()
        args = args or {}
        if name not in known:
            raise AugmentationError(f"{where}[{i}]: unknown transform {name!r} ({_closest(name, known)})")
        if not isinstance(args, dict):
            raise AugmentationError(f"{where}[{i}] {name}: arguments must be a mapping, got {args!r}")
        cls = known[name]
        valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        for arg in args:
            if arg not in valid:
                raise AugmentationError(f"{where}[{i}] {name}: unknown argument {arg!r} ({_closest(arg, valid)})")
        try:
            transforms.append(cls(**args))
        except (ValueError, TypeError) as e:
            first = str(e).strip().splitlines()
            raise AugmentationError(f"{where}[{i}] {name}: {' '.join(first[:3])}") from None
    return A.Compose(transforms)


def train_transform(spec: PreprocessingSpec, augmentation) -> Callable[[Image.Image], np.ndarray]:
    """Training: the shared RGB + resize, the augmentation on uint8 pixels, the shared normalisation."""

    def transform(image: Image.Image) -> np.ndarray:
        pixels = np.asarray(resize(to_rgb(image), spec), dtype=np.uint8)
        pixels = augmentation(image=pixels)["image"]
        return normalize(np.ascontiguousarray(pixels), spec)

    return transform


def augmentation_samples(
    images: Sequence[Image.Image], spec: PreprocessingSpec, augmentation, *, per_image: int = 7
) -> list:
    """For a preview: each image resized as at evaluation, followed by `per_image` augmented draws (uint8 HWC)."""
    rows = []
    for image in images:
        base = np.asarray(resize(to_rgb(image), spec), dtype=np.uint8)
        rows.append([base, *(augmentation(image=base)["image"] for _ in range(per_image))])
    return rows
