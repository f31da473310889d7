"""SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022,
arXiv 2111.09886) on timm's VisionTransformer and SwinTransformer.

Paper defaults: random masking of 32 px mask patches (at 192/224 input) with ratio 0.6; the
encoder processes **all** patches, masked patch embeddings replaced by a learnable mask token;
a one-layer prediction head (1x1 conv to stride^2 * 3 + pixel shuffle); L1 loss on the masked
pixels only. Recipe (set by the stage): AdamW betas (0.9, 0.999), wd 0.05, random resized crop
(0.67-1) + flip. Swin is where SimMIM is strongest.

Mask patch, paper vs ours: the stage's default (`masking.simmim_mask_patch_size`) is the
paper's 32 px from 128 px images up (192 / 224 px: 32, the paper's best), and a quarter of the
image side below 128 px (32 px: 8, 16 px: 4), where 32 px would mask the whole image (32 px)
or 3 of its 4 blocks (64 px); `mask_patch_size` sets any size (here and in the stage options).

As in the official code, the mask token replaces the patch embedding right after patch
embedding: for ViT before the class token is prepended and the position embedding added (so a
masked token = mask_token + its position); for Swin after the patch-embed norm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from timm.models.vision_transformer import VisionTransformer

from .masking import simmim_mask

L1_EPS = 1e-5  # official: loss / (mask.sum() + 1e-5)


def _blend_mask_token(x: torch.Tensor, mask: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """x: [N, ..., D] patch embeddings, mask: [N, ...] (1 = masked) -> masked ones = token."""
    w = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
    return x * (1 - w) + token.to(x.dtype) * w


class SimMIMViT(VisionTransformer):
    """timm VisionTransformer (no classifier) with a learnable mask token.

    forward(x [N, C, H, W], mask [N, H/p, W/p]) -> feature map [N, D, H/p, W/p].
    Parameter names are timm's, plus `mask_token`.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("dynamic_img_size"):
            raise ValueError("SimMIMViT needs a fixed image size (dynamic_img_size=False)")
        super().__init__(**{**kwargs, "num_classes": 0})
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)

    @property
    def encoder_stride(self) -> int:
        return self.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [N, L, D]
        x = _blend_mask_token(x, mask, self.mask_token)
        x = self.norm_pre(self._pos_embed(x))  # prepend cls, add pos-embed
        x = self.norm(self.blocks(x))
        x = x[:, self.num_prefix_tokens :]  # [N, L, D]
        h, w = self.patch_embed.grid_size
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}


class SimMIMSwin(SwinTransformer):
    """timm SwinTransformer (no classifier) with a learnable mask token.

    forward(x [N, C, H, W], mask [N, H/p, W/p]) -> feature map [N, C_last, H/s, W/s], s = the
    last stage's stride (p * 2^(stages-1); 32 for the paper's Swin-B). Window attention uses
    F.scaled_dot_product_attention (timm marks it experimental, so it is switched on here).
    """

    def __init__(self, fused_attn: bool = True, **kwargs: Any) -> None:
        if kwargs.get("dynamic_img_size") or kwargs.get("strict_img_size") is False:
            raise ValueError("SimMIMSwin needs a fixed image size")
        super().__init__(**{**kwargs, "num_classes": 0})
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.fused_attn = fused_attn

    @property
    def encoder_stride(self) -> int:
        return int(self.feature_info[-1]["reduction"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [N, H/p, W/p, C] (timm's Swin is NHWC)
        x = _blend_mask_token(x, mask, self.mask_token)
        x = self.norm(self.layers(x))  # [N, H/s, W/s, C_last]
        return x.permute(0, 3, 1, 2)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}


class SimMIM(nn.Module):
    """Encoder + one-layer prediction head + L1 loss on masked pixels.

    encoder: `SimMIMViT` or `SimMIMSwin` (forward(x, mask) -> [N, C, H/s, W/s]).
    encoder_stride: s, the pixel-shuffle factor back to input resolution (16 for ViT-B/16,
    32 for Swin-B). mask: [N, H/p, W/p] at the model patch grid, 1 = masked.
    """

    def __init__(
        self,
        encoder: SimMIMViT | SimMIMSwin,
        encoder_stride: int,
        in_chans: int = 3,
        mask_patch_size: int = 32,
        mask_ratio: float = 0.6,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_stride = encoder_stride
        self.in_chans = in_chans
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.img_size = tuple(encoder.patch_embed.img_size)
        self.mask_patch_size = mask_patch_size
        self.mask_ratio = mask_ratio
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features, encoder_stride**2 * in_chans, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )
        self.random_mask(1)  # fail early on sizes that do not fit

    def random_mask(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """SimMIM masks for this model: [N, H/p, W/p] bool (see `masking.simmim_mask`)."""
        return simmim_mask(
            batch, self.img_size, self.mask_patch_size, self.patch_size, self.mask_ratio, generator
        )

    def forward_loss(
        self, imgs: torch.Tensor, x_rec: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """imgs, x_rec: [N, C, H, W]; mask: [N, H/p, W/p] (1 = masked).

        L1 summed over masked pixels and channels / (masked pixels * C).
        """
        p = self.patch_size
        mask = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(imgs.dtype)
        loss = F.l1_loss(x_rec, imgs, reduction="none")  # [N, C, H, W]
        return (loss * mask).sum() / (mask.sum() + L1_EPS) / self.in_chans

    def forward(
        self, imgs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """imgs: [N, C, H, W], mask: [N, H/p, W/p] or None (drawn here) -> loss [], x_rec."""
        if mask is None:
            mask = self.random_mask(imgs.shape[0]).to(imgs.device)
        x_rec = self.decoder(self.encoder(imgs, mask))  # [N, C, H, W]
        if x_rec.shape != imgs.shape:
            raise ValueError(
                f"reconstruction {tuple(x_rec.shape)} != input {tuple(imgs.shape)}: "
                f"encoder_stride {self.encoder_stride} does not match the encoder"
            )
        return self.forward_loss(imgs, x_rec, mask), x_rec

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights with timm names (the mask token dropped)."""
        return {k: v for k, v in self.encoder.state_dict().items() if k != "mask_token"}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"encoder." + k for k in self.encoder.no_weight_decay()}


def _build(encoder: SimMIMViT | SimMIMSwin, mask_patch_size: int, **kw: Any) -> SimMIM:
    in_chans = encoder.patch_embed.proj.in_channels
    return SimMIM(encoder, encoder.encoder_stride, in_chans, mask_patch_size=mask_patch_size, **kw)


def simmim_vit_tiny_patch4(
    img_size: int = 32, mask_patch_size: int = 8, mask_ratio: float = 0.6, **kwargs: Any
) -> SimMIM:
    """ViT-Ti/4 at 32 px (stride 4); mask patch 8 px (the paper's 32 px scaled to the image)."""
    cfg: dict[str, Any] = dict(patch_size=4, embed_dim=192, depth=12, num_heads=3)
    encoder = SimMIMViT(img_size=img_size, **{**cfg, **kwargs})
    return _build(encoder, mask_patch_size, mask_ratio=mask_ratio)


def simmim_swin_tiny_32(
    img_size: int = 32, mask_patch_size: int = 8, mask_ratio: float = 0.6, **kwargs: Any
) -> SimMIM:
    """A small Swin for 32 px: patch 2, window 4, embed 48, depths (2, 2), heads (3, 6);
    final stride 4, mask patch 8 px."""
    cfg: dict[str, Any] = dict(
        patch_size=2, window_size=4, embed_dim=48, depths=(2, 2), num_heads=(3, 6),
        drop_path_rate=0.0,
    )  # fmt: skip
    encoder = SimMIMSwin(img_size=img_size, **{**cfg, **kwargs})
    return _build(encoder, mask_patch_size, mask_ratio=mask_ratio)


def simmim_vit_base_patch16(
    img_size: int = 224, mask_patch_size: int = 32, mask_ratio: float = 0.6, **kwargs: Any
) -> SimMIM:
    """ViT-B/16 at 224 px, stride 16, mask patch 32 (paper). Layer scale 0.1 and drop path 0.1
    as the official config; learned absolute position embedding (timm) instead of the
    official shared relative position bias."""
    cfg: dict[str, Any] = dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, init_values=0.1,
        drop_path_rate=0.1,
    )  # fmt: skip
    encoder = SimMIMViT(img_size=img_size, **{**cfg, **kwargs})
    return _build(encoder, mask_patch_size, mask_ratio=mask_ratio)


def simmim_swin_base_window6(
    img_size: int = 192, mask_patch_size: int = 32, mask_ratio: float = 0.6, **kwargs: Any
) -> SimMIM:
    """Swin-B at 192 px, window 6, stride 32, mask patch 32 (the paper's main setting)."""
    cfg: dict[str, Any] = dict(
        patch_size=4, window_size=6, embed_dim=128, depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32), drop_path_rate=0.0,
    )  # fmt: skip
    encoder = SimMIMSwin(img_size=img_size, **{**cfg, **kwargs})
    return _build(encoder, mask_patch_size, mask_ratio=mask_ratio)
