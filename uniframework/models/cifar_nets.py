"""Small fast CNNs for 32 px images, from the CIFAR-10 speed-run literature (written here, not
copied): plain conv-BN-activation layers, max-pool downsampling, few residual blocks, a global
max-pool and a fixed scale on the features (so on the logits: a smaller effective lr for the
linear head, as in both sources).

- `resnet9`: David Page's ResNet-9 ("How to train your ResNet", 2018, the DAWNBench CIFAR-10
  entry): a 64-channel prep layer, then three stages of 128 / 256 / 512 channels, each a
  3x3 conv + 2x2 max-pool, the first and last followed by a residual block of two convs; logits
  scaled by 0.125. 6.6 M parameters.
- `resnet9_half`: the same at half the widths (32-64-128-256, 1.6 M parameters).
- `airbench`: Keller Jordan's airbench94 network ("94% on CIFAR-10 in 3.29 seconds on a single
  GPU", 2024): a 2x2 stem conv (24 channels, no padding), then three blocks of 64 / 256 / 256
  channels, each conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU (no residuals); logits
  scaled by 1/9. 2.0 M parameters. (Its frozen patch-whitening stem, lookahead EMA and
  multi-crop TTA are not reproduced; the stem is an ordinary trainable conv.)

Options (`model.timm_kwargs`, as for `efficientnet_phi`): `flip_tta: true` makes the network, in
eval mode, return the mean of the features of each image and of its mirror image (test-time
flip augmentation: every stage's evaluation, features and `predict` see it; training does not);
only for datasets whose classes are mirror-symmetric (not digits). Any other key is an error.

Layers are conv -> max-pool -> BN -> activation (airbench's order; Page pools after the ReLU):
pooling first runs BN and the activation on a quarter of the pixels, which matters on a CPU.
Every network works at any image size from 8 px (airbench: 16 px) up (global pooling at the end).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import UserError
from ..registry import BACKBONES


def conv_bn(c_in: int, c_out: int, act: type[nn.Module], pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias) [-> 2x2 max-pool] -> BN -> activation."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), act()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x), f = two conv-BN-activation layers at constant width."""

    def __init__(self, width: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width, act), conv_bn(width, width, act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FastCNN(nn.Module):
    """stem -> stages (each downsampling by 2) -> global max-pool -> features * `scale`.

    `forward(x [N, 3, S, S]) -> [N, num_features]`; `drop_rate` is dropout on the pooled
    features (read per call, so progressive learning can schedule it)."""

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        width: int,
        scale: float,
        drop_rate: float = 0.0,
        flip_tta: bool = False,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.num_features, self.scale, self.drop_rate = width, scale, float(drop_rate)
        self.flip_tta = bool(flip_tta)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(self.stages(self.stem(x)), dim=(2, 3)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta and not self.training:  # mean over the image and its mirror image
            return self._features(torch.cat([x, x.flip(3)])).view(2, len(x), -1).mean(0)
        x = self._features(x)
        return F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x


def _options(cfg: ModelConfig, name: str) -> dict:
    """The `model.timm_kwargs` these networks take (flip_tta); anything else is an error."""
    unknown = set(cfg.timm_kwargs) - {"flip_tta"}
    if unknown:
        raise UserError(
            f"config key 'model.timm_kwargs' has {sorted(unknown)}, which backbone '{name}' does "
            "not take (it takes flip_tta: true | false)"
        )
    return {"drop_rate": cfg.drop_rate, "flip_tta": cfg.timm_kwargs.get("flip_tta", False)}


def _resnet9(widths: tuple[int, int, int, int], cfg: ModelConfig, name: str) -> FastCNN:
    w0, w1, w2, w3 = widths
    act = nn.ReLU
    stages = [
        nn.Sequential(conv_bn(w0, w1, act, pool=True), Residual(w1, act)),
        conv_bn(w1, w2, act, pool=True),
        nn.Sequential(conv_bn(w2, w3, act, pool=True), Residual(w3, act)),
    ]
    return FastCNN(conv_bn(3, w0, act), stages, w3, 0.125, **_options(cfg, name))


@BACKBONES.register("resnet9")
def resnet9(cfg: ModelConfig, image_size: int) -> nn.Module:
    """Page's ResNet-9 (DAWNBench CIFAR-10, 2018): 64-128-256-512, max-pool, 2 residual blocks."""
    return _resnet9((64, 128, 256, 512), cfg, "resnet9")


@BACKBONES.register("resnet9_half")
def resnet9_half(cfg: ModelConfig, image_size: int) -> nn.Module:
    """Page's ResNet-9 at half width (32-64-128-256, 1.6 M parameters): for CPU runs."""
    return _resnet9((32, 64, 128, 256), cfg, "resnet9_half")


@BACKBONES.register("airbench")
def airbench(cfg: ModelConfig, image_size: int) -> nn.Module:
    """Jordan's airbench94 net (2024): 2x2 stem, blocks 64-256-256 of conv-pool-BN-GELU x2."""
    act = nn.GELU
    widths = (64, 256, 256)
    stem = nn.Sequential(nn.Conv2d(3, 24, 2, padding=0, bias=True), act())
    stages, c_in = [], 24
    for w in widths:
        stages.append(nn.Sequential(conv_bn(c_in, w, act, pool=True), conv_bn(w, w, act)))
        c_in = w
    return FastCNN(stem, stages, widths[-1], 1 / 9, **_options(cfg, "airbench"))
