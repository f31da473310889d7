"""Backbones through timm behind one interface: `forward(x [N, 3, S, S]) -> features [N, D]`.

Every backbone is a timm model created with `num_classes=0` (timm then returns pooled
features) and exposes `num_features = D`. Registered names cover the small-image variants we
need; any other timm model name works too (`model.backbone: convnext_atto`).
"""

from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from ..config import ModelConfig
from ..errors import UserError, did_you_mean
from ..registry import BACKBONES


def _timm(name: str, cfg: ModelConfig, **kwargs: Any) -> nn.Module:
    kwargs = {"drop_rate": cfg.drop_rate, **kwargs, **cfg.timm_kwargs}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as err:
        raise UserError(
            f"timm model '{name}' rejected its arguments ({err}); fix model.timm_kwargs"
        ) from None


def _vit(name: str):
    def build(cfg: ModelConfig, image_size: int) -> nn.Module:
        """ViT at any image and patch size (default patch = image_size // 8, 64 tokens)."""
        patch = cfg.patch_size or max(1, image_size // 8)
        if image_size % patch:
            raise UserError(
                f"config key 'model.patch_size' = {patch} does not divide data.image_size = "
                f"{image_size}; pick a divisor"
            )
        return _timm(name, cfg, img_size=image_size, patch_size=patch)

    return build


def _resnet(name: str):
    def build(cfg: ModelConfig, image_size: int) -> nn.Module:
        """ResNet; `small_input` swaps the 7x7/2 stem + max-pool for a 3x3/1 stem (CIFAR-style)."""
        model = _timm(name, cfg)
        return _small_stem(model) if cfg.small_input else model

    return build


def _small_stem(model: nn.Module) -> nn.Module:
    """3x3 stride-1 first conv and no max-pool: keeps 32 px feature maps at 4x4 at the end."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


for _short, _timm_name in [
    ("vit_tiny", "vit_tiny_patch16_224"),
    ("vit_small", "vit_small_patch16_224"),
    ("vit_base", "vit_base_patch16_224"),
]:
    BACKBONES.register(_short)(_vit(_timm_name))
for _name in ("resnet18", "resnet50"):
    BACKBONES.register(_name)(_resnet(_name))


@BACKBONES.register("resnet_tiny")
def resnet_tiny(cfg: ModelConfig, image_size: int) -> nn.Module:
    """A ResNet-10 of widths (32, 64, 128, 256) on timm's ResNet class (1.2 M parameters):
    the fast default for CPU runs, tests and the demo. Small-input stem as above."""
    from timm.models.resnet import BasicBlock, ResNet

    kwargs = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256))
    model = ResNet(
        **kwargs,
        num_classes=0,
        drop_rate=cfg.drop_rate,
        drop_path_rate=cfg.drop_path_rate,
        **cfg.timm_kwargs,
    )
    return _small_stem(model) if cfg.small_input else model


def build_backbone(cfg: ModelConfig, image_size: int) -> nn.Module:
    """A registered backbone, or any timm model by name; `.num_features` is the feature size."""
    if cfg.backbone in BACKBONES:
        return BACKBONES.get(cfg.backbone)(cfg, image_size)
    if timm.is_model(cfg.backbone):
        return _timm(cfg.backbone, cfg)
    raise UserError(
        f"config key 'model.backbone' = '{cfg.backbone}' is neither registered nor a timm model"
        f"{did_you_mean(cfg.backbone, BACKBONES.names() + timm.list_models())}. "
        "Run `uniframework list` for the registered names."
    )


# Registered from their own files: EfficientNet V1/V2 (efficientnet_b0..b7, v2_s/m/l, phi) and
# the small fast CNNs for 32 px images (resnet9, resnet9_half, airbench)
from . import cifar_nets, efficientnet  # noqa: E402, F401
