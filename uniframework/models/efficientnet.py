"""EfficientNet (Tan & Le, ICML 2019) and EfficientNetV2 (Tan & Le, ICML 2021) on timm's classes.

Architectures are tables (one row per stage) turned into timm block strings and decoded by
`timm.models._efficientnet_builder.decode_arch_def`; timm's `EfficientNet` class builds the
MBConv / Fused-MBConv blocks. Only the scaling is ours, as small pure helpers:

- compound scaling (V1 §3.3): depth `d = α^φ`, width `w = β^φ`, resolution `r = γ^φ` with
  α=1.2, β=1.1, γ=1.15 (α·β²·γ² ≈ 2, so FLOPs grow ≈ 2^φ); `efficientnet(phi)` takes any φ ≥ 0;
- channels `round_filters` (multiple of 8, never < 90% of the scaled value), repeats
  `round_repeats` (rounded up), as in the reference TF implementation;
- presets B0–B7 use the published (width, depth, resolution, dropout) table, which is the
  compound rule hand-tuned (B1 is depth 1.1, not 1.2); V2-S/M/L use the paper's stage tables.

Stochastic depth: both papers keep the drop-connect rate at 0.2 (survival 0.8) for every size,
so only dropout grows with φ here: `0.2 + 0.05·φ`, at most 0.5 — the published B0–B7 dropouts
are this line rounded down to a step of 0.1.

Registered backbones (`model.backbone`): `efficientnet_b0` … `efficientnet_b7`,
`efficientnetv2_s|m|l`, and `efficientnet_phi` (φ from `model.timm_kwargs: {phi: 2.5}`, default 0;
optional `alpha`, `beta`, `gamma`). `model.small_input: true` (the default, as for ResNet) gives the
small-image variant: stem stride 1 and the first stride-2 stage at stride 1 (total stride 8, so a
32 px image ends at 4x4, as ResNet's small stem does). `model.drop_rate` / `drop_path_rate`
override the paper's rates only when set in the config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch.nn as nn
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet

from ..config import ModelConfig
from ..errors import UserError
from ..registry import BACKBONES

log = logging.getLogger(__name__)

# One row per stage: (block, repeats, kernel, stride, expand ratio, out channels, SE ratio).
# Blocks: ds = depthwise-separable (MBConv1), ir = MBConv, er = Fused-MBConv, cn = plain conv.
Stage = tuple[str, int, int, int, int, int, float]

B0_STAGES: list[Stage] = [  # V1 Table 1; stem 32, head 1280, SiLU, SE 0.25 of the block input
    ("ds", 1, 3, 1, 1, 16, 0.25),
    ("ir", 2, 3, 2, 6, 24, 0.25),
    ("ir", 2, 5, 2, 6, 40, 0.25),
    ("ir", 3, 3, 2, 6, 80, 0.25),
    ("ir", 3, 5, 1, 6, 112, 0.25),
    ("ir", 4, 5, 2, 6, 192, 0.25),
    ("ir", 1, 3, 1, 6, 320, 0.25),
]
V2_STAGES: dict[str, list[Stage]] = {  # V2 Table 4 (S); M, L from the official release
    "s": [
        ("cn", 2, 3, 1, 1, 24, 0),
        ("er", 4, 3, 2, 4, 48, 0),
        ("er", 4, 3, 2, 4, 64, 0),
        ("ir", 6, 3, 2, 4, 128, 0.25),
        ("ir", 9, 3, 1, 6, 160, 0.25),
        ("ir", 15, 3, 2, 6, 256, 0.25),
    ],
    "m": [
        ("cn", 3, 3, 1, 1, 24, 0),
        ("er", 5, 3, 2, 4, 48, 0),
        ("er", 5, 3, 2, 4, 80, 0),
        ("ir", 7, 3, 2, 4, 160, 0.25),
        ("ir", 14, 3, 1, 6, 176, 0.25),
        ("ir", 18, 3, 2, 6, 304, 0.25),
        ("ir", 5, 3, 1, 6, 512, 0.25),
    ],
    "l": [
        ("cn", 4, 3, 1, 1, 32, 0),
        ("er", 7, 3, 2, 4, 64, 0),
        ("er", 7, 3, 2, 4, 96, 0),
        ("ir", 10, 3, 2, 4, 192, 0.25),
        ("ir", 19, 3, 1, 6, 224, 0.25),
        ("ir", 25, 3, 2, 6, 384, 0.25),
        ("ir", 7, 3, 1, 6, 640, 0.25),
    ],
}


@dataclass(frozen=True)
class Scaling:
    """How one EfficientNet is scaled from its base table."""

    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # input size the model is meant for (px)
    dropout: float  # before the classifier
    drop_path: float = 0.2  # stochastic depth, max rate (survival probability 0.8)


# V1 paper / reference code: name -> (width, depth, resolution, dropout)
PRESETS: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}
# V2: unscaled tables; resolution = the paper's eval size, dropout = the official final rate
V2_PRESETS: dict[str, Scaling] = {
    "s": Scaling(1.0, 1.0, 384, 0.2),
    "m": Scaling(1.0, 1.0, 480, 0.3),
    "l": Scaling(1.0, 1.0, 480, 0.4),
}
V2_STEM = {"s": 24, "m": 24, "l": 32}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """`channels · width` to the nearest multiple of `divisor`, never losing more than 10%."""
    return round_channels(channels, multiplier=width, divisor=divisor, round_limit=0.9)


def round_repeats(repeats: int, depth: float) -> int:
    """`repeats · depth`, rounded up (the reference code's `ceil`)."""
    return int(math.ceil(depth * repeats))


def compound_scaling(
    phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15
) -> Scaling:
    """V1 eq. 3: depth α^φ, width β^φ, resolution 224·γ^φ (rounded); dropout grows with φ."""
    if not (isinstance(phi, (int, float)) and math.isfinite(phi) and phi >= 0):
        raise UserError(
            f"config key 'model.timm_kwargs.phi' = {phi!r} must be a real number >= 0 "
            "(0 = B0, 1 = twice the FLOPs, ...): set e.g. model.timm_kwargs.phi=2.5"
        )
    for key, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (isinstance(v, (int, float)) and v >= 1):
            raise UserError(
                f"config key 'model.timm_kwargs.{key}' = {v!r} must be a number >= 1 "
                "(paper: alpha 1.2, beta 1.1, gamma 1.15); fix or remove it"
            )
    return Scaling(
        width=beta**phi,
        depth=alpha**phi,
        resolution=round(224 * gamma**phi),
        dropout=min(0.5, 0.2 + 0.05 * phi),
    )


def block_strings(stages: list[Stage], depth: float, small_input: bool) -> list[list[str]]:
    """timm block strings, one stage per list; small input turns the first stride 2 into 1."""
    out, first_s2 = [], True
    for block, r, k, s, e, c, se in stages:
        if small_input and s == 2 and first_s2:
            s, first_s2 = 1, False
        text = f"{block}_r{round_repeats(r, depth)}_k{k}_s{s}_e{e}_c{c}"
        if se:
            text += f"_se{se}"
        elif block == "cn":
            text += "_skip"  # V2's first Fused-MBConv1 is a conv with a residual
        out.append([text])
    return out


def _build(
    stages: list[Stage],
    scaling: Scaling,
    stem: int = 32,
    small_input: bool = False,
    num_classes: int = 0,
    **kwargs: Any,
) -> EfficientNet:
    """timm's EfficientNet from a stage table. `num_classes=0`: forward gives pooled [N, D]."""
    round_fn = partial(round_filters, width=scaling.width)
    kwargs = {"drop_rate": scaling.dropout, "drop_path_rate": scaling.drop_path, **kwargs}
    try:
        model = EfficientNet(
            block_args=decode_arch_def(block_strings(stages, scaling.depth, small_input)),
            num_classes=num_classes,
            num_features=round_fn(1280),
            stem_size=stem,
            round_chs_fn=round_fn,
            act_layer=nn.SiLU,
            **kwargs,
        )
    except TypeError as err:
        raise UserError(
            f"EfficientNet rejected its arguments ({err}); fix model.timm_kwargs"
        ) from None
    if small_input:
        # 3x3 stem at stride 1: timm pads k3 convs by 1 at either stride, so padding holds
        model.conv_stem.stride = (1, 1)
    model.scaling = scaling
    return model


def efficientnet(
    phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15, **kwargs: Any
) -> EfficientNet:
    """EfficientNet at any real φ ≥ 0, compound-scaled from B0 (`model.scaling.resolution`
    is the input size it is meant for). kwargs: num_classes, small_input, drop_rate, ..."""
    return _build(B0_STAGES, compound_scaling(phi, alpha, beta, gamma), **kwargs)


def efficientnet_preset(name: str, **kwargs: Any) -> EfficientNet:
    """`b0` … `b7` (published table) or `v2_s`, `v2_m`, `v2_l`."""
    if name in PRESETS:
        return _build(B0_STAGES, PRESETS[name], **kwargs)
    size = name.removeprefix("v2_")
    if name.startswith("v2_") and size in V2_PRESETS:
        return _build(V2_STAGES[size], V2_PRESETS[size], stem=V2_STEM[size], **kwargs)
    known = [*PRESETS, *(f"v2_{k}" for k in V2_PRESETS)]
    raise UserError(
        f"unknown EfficientNet preset '{name}': use one of {', '.join(known)}, "
        "or efficientnet(phi) for any other size"
    )


def _overrides(cfg: ModelConfig) -> dict[str, Any]:
    """Builder kwargs from the model config: the paper's rates unless the config sets them."""
    kwargs: dict[str, Any] = {"small_input": cfg.small_input}
    for key in ("drop_rate", "drop_path_rate"):
        if key in cfg.model_fields_set:
            kwargs[key] = getattr(cfg, key)
    return kwargs


def _register_preset(name: str, preset: str) -> None:
    def build(cfg: ModelConfig, image_size: int) -> nn.Module:
        return efficientnet_preset(preset, **_overrides(cfg), **cfg.timm_kwargs)

    title = f"EfficientNet-{preset.upper()}".replace("-V2_", "V2-")
    build.__doc__ = f"{title} on timm's blocks; small_input: stem stride 1, one fewer stride 2"
    BACKBONES.register(name)(build)


for _p in PRESETS:
    _register_preset(f"efficientnet_{_p}", _p)
for _p in V2_PRESETS:
    _register_preset(f"efficientnetv2_{_p}", f"v2_{_p}")


@BACKBONES.register("efficientnet_phi")
def efficientnet_phi(cfg: ModelConfig, image_size: int) -> nn.Module:
    """EfficientNet at φ = model.timm_kwargs.phi (default 0 = B0; optional alpha, beta, gamma)."""
    kwargs = {"phi": 0.0, **cfg.timm_kwargs}
    model = efficientnet(kwargs.pop("phi"), **_overrides(cfg), **kwargs)
    log.info("efficientnet_phi: %s", model.scaling)
    return model
