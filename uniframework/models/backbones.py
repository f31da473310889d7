"""Backbones through timm behind one interface: `forward(x [N, 3, S, S]) -> features [N, D]`.

Every backbone is a timm model created with `num_classes=0` (timm then returns pooled
features) and exposes `num_features = D`. Registered names cover the small-image variants we
need; any other timm model name works too (`model.backbone: convnext_atto`).

A backbone starts from random weights, timm's ImageNet weights (`model.pretrained`: the hub) or a
file (`model.weights`, see `pretrained.py`). Weights trained elsewhere bring their stem, so
`small_input` is off for them, and their own mean / std (`pretrained_stats`).
"""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from timm.models import get_pretrained_cfg

from ..config import ModelConfig
from ..errors import UserError, did_you_mean
from ..registry import BACKBONES
from .pretrained import describe_file, hub_cfg, hub_error, load_file

log = logging.getLogger(__name__)

# Registered names that timm.create_model builds: the timm model (and weights) behind each.
VITS = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}
RESNETS = {"resnet18": "resnet18", "resnet50": "resnet50"}


def _timm(name: str, cfg: ModelConfig, **kwargs: Any) -> nn.Module:
    """timm's model `name`; with `cfg.pretrained`, its pretrained weights from the hub (timm
    resamples a ViT's position embeddings and patch embedding to `img_size` / `patch_size`)."""
    kwargs = {"drop_rate": cfg.drop_rate, **kwargs, **cfg.timm_kwargs}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        return timm.create_model(name, pretrained=cfg.pretrained, num_classes=0, **kwargs)
    except TypeError as err:
        raise UserError(
            f"timm model '{name}' rejected its arguments ({err}); fix model.timm_kwargs"
        ) from None
    except Exception as err:  # the download: errors of urllib, requests, httpx, huggingface_hub
        if not cfg.pretrained:
            raise
        raise hub_error(err, hub_cfg(name, cfg.backbone)) from None


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


for _short, _timm_name in VITS.items():
    BACKBONES.register(_short)(_vit(_timm_name))
for _short, _timm_name in RESNETS.items():
    BACKBONES.register(_short)(_resnet(_timm_name))


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


def build_backbone(cfg: ModelConfig, image_size: int, start: bool = True) -> nn.Module:
    """A registered backbone, or any timm model by name; `.num_features` is the feature size.

    `start`: load the start weights, `model.weights` or else timm's hub (`model.pretrained`).
    Off for every model whose weights come next from the run's own checkpoint (later stages,
    resumed fits, `predict`, `export`): the same architecture, nothing read, no network."""
    if cfg.backbone not in BACKBONES and not timm.is_model(cfg.backbone):
        raise UserError(
            f"config key 'model.backbone' = '{cfg.backbone}' is neither registered nor a timm "
            f"model{did_you_mean(cfg.backbone, BACKBONES.names() + timm.list_models())}. "
            "Run `uniframework list` for the registered names."
        )
    built = _as_built(cfg, start)
    if built.pretrained:  # refuse a backbone without weights before building anything
        hub_cfg(timm_name(cfg.backbone), cfg.backbone)
    if cfg.backbone in BACKBONES:
        model = BACKBONES.get(cfg.backbone)(built, image_size)
    else:
        model = _timm(cfg.backbone, built)
    if built.pretrained:
        log.info("backbone starts from timm's weights %s", start_weights(cfg))
    if start and cfg.weights:
        load_file(model, cfg.weights)
    return model


def _as_built(cfg: ModelConfig, start: bool) -> ModelConfig:
    """The config the builders see: `pretrained` only when this build reads timm's hub (a first
    build without a file, which `build_backbone` loads itself), and no small-input stem when the
    backbone starts from weights trained elsewhere."""
    update: dict[str, Any] = {
        "pretrained": start and cfg.pretrained and cfg.weights is None,
        "weights": None,
    }
    if cfg.starts_pretrained and cfg.small_input:
        # turned off and logged rather than refused: small_input defaults to true, so refusing
        # would make every `model.pretrained=true` also need `model.small_input=false`
        if start:
            log.info(
                "model.small_input is off: the backbone starts from ImageNet weights, whose stem "
                "(strided conv + max-pool) it would replace; prefer data.image_size >= 64"
            )
        update["small_input"] = False
    return cfg.model_copy(update=update)


def timm_name(backbone: str) -> str | None:
    """The timm model (and pretrained weights) behind `backbone`; None for a backbone this
    project builds itself (resnet_tiny, the EfficientNet tables, the 32 px CNNs)."""
    if backbone in VITS or backbone in RESNETS:
        return {**VITS, **RESNETS}[backbone]
    return backbone if backbone not in BACKBONES and timm.is_model(backbone) else None


def pretrained_stats(cfg: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) the backbone's weights expect when they were trained elsewhere: timm's
    `pretrained_cfg` (through `resolve_data_config`), ImageNet's for a file of weights for a
    backbone timm has none for; None otherwise (the dataset's own statistics apply)."""
    if not cfg.starts_pretrained:
        return None
    name = timm_name(cfg.backbone)
    if cfg.pretrained and cfg.weights is None:
        pcfg = hub_cfg(name, cfg.backbone)
    else:
        try:
            pcfg = get_pretrained_cfg(name) if name is not None else None
        except RuntimeError:  # a tag timm does not know: building the backbone names it
            pcfg = None
    if pcfg is None:
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    data_cfg = resolve_data_config(pretrained_cfg=pcfg.to_dict())
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"])


def start_weights(cfg: ModelConfig) -> str:
    """What the backbone starts from, for the run's records: a file with its sha256,
    `timm:<model>.<tag>`, or `random init`."""
    if cfg.weights:
        return describe_file(cfg.weights)
    if cfg.pretrained:
        pcfg = hub_cfg(timm_name(cfg.backbone), cfg.backbone)
        return f"timm:{pcfg.architecture}" + (f".{pcfg.tag}" if pcfg.tag else "")
    return "random init"


# Registered from their own files: EfficientNet V1/V2 (efficientnet_b0..b7, v2_s/m/l, phi) and
# the small fast CNNs for 32 px images (resnet9, resnet9_half, airbench)
from . import cifar_nets, efficientnet  # noqa: E402, F401
