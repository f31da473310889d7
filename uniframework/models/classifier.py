"""The one model shape every stage uses: backbone (features) -> linear head (logits)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .backbones import build_backbone


class Classifier(nn.Module):
    """`forward_features(x) -> [N, D]`, `forward_head(f) -> [N, C]`, `forward(x) -> logits`."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.num_features
        self.head = nn.Linear(self.feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def grow_head(model: Classifier, num_new: int) -> Classifier:
    """Add `num_new` outputs: rows 0..C-1 keep their weights, the new rows start fresh
    (nn.Linear's default init). In place; returns the model."""
    old = model.head
    head = nn.Linear(old.in_features, old.out_features + num_new).to(old.weight.device)
    with torch.no_grad():
        head.weight[: old.out_features] = old.weight
        head.bias[: old.out_features] = old.bias
    model.head = head
    return model


def shrink_head(model: Classifier, num_classes: int) -> Classifier:
    """Keep the first `num_classes` outputs (drops the supervised stage's "unknown" output)."""
    old = model.head
    head = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    with torch.no_grad():
        head.weight.copy_(old.weight[:num_classes])
        head.bias.copy_(old.bias[:num_classes])
    model.head = head
    return model


def build_classifier(
    cfg: ModelConfig, image_size: int, num_classes: int, start: bool = True
) -> Classifier:
    """Classifier with a fresh head on a backbone that, with `start`, starts from `cfg.weights`
    (a classifier's file gives its backbone) or timm's hub (`cfg.pretrained`); without `start`
    nothing is loaded, for a model whose weights come next from the run's own checkpoint."""
    return Classifier(build_backbone(cfg, image_size, start), num_classes)
