"""The model factory: `create_model(name, num_classes)` over a small registry of builders.

Every model is a backbone that ends in the penultimate embedding, plus a linear head, and
returns `(logits, embedding)`: serving logs embeddings for drift monitoring without a second
pass. Weights are never downloaded; `weights=` loads a local state-dict file for transfer
learning (e.g. torchvision's resnet18 weights copied onto the machine).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lensops.core.errors import UsageError


class ModelError(UsageError):
    """Unknown model name or unusable weights file; the message says what is available."""


class Classifier(nn.Module):
    """backbone(x) -> embedding; head(embedding) -> logits. forward returns both."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embedding_dim, num_classes)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(x)
        return self.head(self.dropout(embedding)), embedding


def _small_cnn() -> tuple[nn.Module, int]:
    """A compact CNN for small images (the 32x32 digits): three conv stages, global pooling."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    layers = [
        *block(3, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers), 128


def _torchvision(name: str, head_path: str) -> Callable[[], tuple[nn.Module, int]]:
    """A torchvision model (no pretrained weights) with its final linear layer cut off."""

    def build() -> tuple[nn.Module, int]:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        parent_name, _, attr = head_path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        last = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
        dim = last.in_features
        if attr.isdigit():
            parent[int(attr)] = nn.Identity()
        else:
            setattr(parent, attr, nn.Identity())
        return model, dim

    return build


MODELS: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "smallcnn": _small_cnn,
    "resnet18": _torchvision("resnet18", "fc"),
    "resnet34": _torchvision("resnet34", "fc"),
    "resnet50": _torchvision("resnet50", "fc"),
    "mobilenet_v3_small": _torchvision("mobilenet_v3_small", "classifier.3"),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", "classifier.3"),
    "efficientnet_b0": _torchvision("efficientnet_b0", "classifier.1"),
    "convnext_tiny": _torchvision("convnext_tiny", "classifier.2"),
}


def create_model(name: str, num_classes: int, *, weights: Path | str | None = None, dropout: float = 0.0) -> Classifier:
    """A fresh model; with `weights`, its backbone initialised from a local state-dict file."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"available: {', '.join(MODELS)}"
        raise ModelError(f"unknown model {name!r} ({hint})")
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    backbone, dim = MODELS[name]()
    if weights is not None:
        load_backbone_weights(backbone, Path(weights))
    return Classifier(backbone, dim, num_classes, dropout)


def load_backbone_weights(backbone: nn.Module, path: Path) -> None:
    """Load a state dict (a torchvision checkpoint or a lensops backbone) without its classifier.

    Loaded with `weights_only=True`: a weights file can carry tensors, never code.
    """
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or non-tensor file
        raise ModelError(f"weights file {path} cannot be read as a state dict: {e}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelError(f"weights file {path} shares no tensors with this model's backbone")
    backbone.load_state_dict(usable, strict=False)
