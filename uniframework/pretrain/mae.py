"""Masked Autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, arXiv 2111.06377), on timm's ViT `Block` and `PatchEmbed`.

Paper defaults: mask ratio 0.75; the encoder sees only the visible patches (+ class token);
decoder 8 blocks of width 512 (ViT-B/L/H); fixed 2-D sin-cos position embeddings;
MSE on the masked patches only, with `norm_pix_loss` (per-patch normalised targets).
Recipe (set by the stage, not here): AdamW betas (0.9, 0.95), wd 0.05,
lr = 1.5e-4 * batch / 256, cosine schedule with warm-up, random resized crop (0.2-1) + flip.

The encoder's parameters are named like timm's `VisionTransformer` (patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm), so `encoder_state_dict()` loads straight into one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .masking import patchify, random_masking, unpatchify
from .pos_embed import sincos_2d

NORM_PIX_EPS = 1e-6  # as in MAE's forward_loss


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a small Transformer decoder.

    mask: [N, L], 0 keep, 1 remove. pred: [N, L, p*p*C] (in norm-pix space if norm_pix_loss).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # as timm ViT and MAE
        self.config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        )  # fmt: skip
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.mask_ratio = mask_ratio

        # encoder (timm ViT names)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # fixed sin-cos, not learned; a Parameter (frozen) so timm ViT can load it by name
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio, norm_layer)
        self.norm = norm_layer(embed_dim)

        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = _blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, norm_layer
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE init: sin-cos pos-embeds, patch_embed like a Linear (xavier), tokens N(0, 0.02),
        Linear xavier-uniform with zero bias, LayerNorm (1, 0)."""
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, True)[None])
        dec_dim = self.decoder_pos_embed.shape[-1]
        self.decoder_pos_embed.data.copy_(sincos_2d(dec_dim, self.grid_size, True)[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_linear_and_norm)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: [N, C, H, W] -> latent [N, 1 + L_keep, D], mask [N, L], ids_restore [N, L].

        Only the visible tokens (+ class token) go through the blocks. mask_ratio=0.0 encodes
        all tokens in their original order (same ViT without masking, e.g. for benchmarks).
        """
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]  # [N, L, D]
        if mask_ratio > 0:
            x, mask, ids_restore = random_masking(x, mask_ratio)
        else:
            n, seq_len, _ = x.shape
            mask = x.new_zeros(n, seq_len)
            ids_restore = torch.arange(seq_len, device=x.device).expand(n, -1)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = self.norm(self.blocks(x))
        return x, mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """x: [N, 1 + L_keep, D] latent, ids_restore: [N, L] -> pred [N, L, p*p*C]."""
        x = self.decoder_embed(x)  # [N, 1 + L_keep, D_dec]
        n, seq_len = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, seq_len + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # shuffled order, no cls
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:, :]  # drop the class token

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target [N, L, p*p*C]: pixels, per-patch normalised if norm_pix_loss."""
        target = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as in MAE
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        return target

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """imgs: [N, C, H, W], pred: [N, L, p*p*C], mask: [N, L] (0 keep, 1 remove).

        Mean squared error per patch, averaged over the removed patches only.
        """
        loss = ((pred - self.target(imgs)) ** 2).mean(dim=-1)  # [N, L]
        return (loss * mask).sum() / mask.sum().clamp_min(1)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: [N, C, H, W] -> loss [], pred [N, L, p*p*C], mask [N, L]."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Image for a figure: visible patches pasted back, masked ones predicted.

        Predictions are de-normalised from norm-pix space with each target patch's own
        mean/var. Returns [N, C, H, W] in the pixel space of imgs.
        """
        patches = patchify(imgs, self.patch_size)
        if self.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            var = patches.var(dim=-1, keepdim=True)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        m = mask.unsqueeze(-1).to(pred.dtype)
        return unpatchify(patches * (1 - m) + pred * m, self.patch_size, self.grid_size)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights with timm `VisionTransformer` names (load with strict=False:
        only the classifier head is missing)."""
        prefixes = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def encoder_config(self) -> dict[str, Any]:
        """Keyword arguments for a timm `VisionTransformer` with the same encoder."""
        return dict(self.config)


def _blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float, norm_layer: Callable[..., nn.Module]
) -> nn.Sequential:
    """timm ViT blocks (qkv bias, fused scaled-dot-product attention), named blocks.N.*."""
    return nn.Sequential(
        *[
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        ]
    )


def _init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)  # as the official JAX ViT
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def mae_vit_tiny_patch4(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-Ti/4 for 32 px images (8x8 = 64 patches); decoder 128 wide, 2 blocks
    (~7% of the encoder's per-token compute, the paper keeps the decoder under ~10%)."""
    cfg: dict[str, Any] = dict(
        img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3,
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
    )  # fmt: skip
    return MaskedAutoencoderViT(**{**cfg, **kwargs})


def mae_vit_small_patch4(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-S/4 for 32 px images; decoder 192 wide, 2 blocks."""
    cfg: dict[str, Any] = dict(
        img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6,
        decoder_embed_dim=192, decoder_depth=2, decoder_num_heads=6,
    )  # fmt: skip
    return MaskedAutoencoderViT(**{**cfg, **kwargs})


def mae_vit_base_patch16(**kwargs: Any) -> MaskedAutoencoderViT:
    """ViT-B/16 at 224 px with the paper's decoder: 512 wide, 8 blocks, 16 heads."""
    cfg: dict[str, Any] = dict(
        img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
    )  # fmt: skip
    return MaskedAutoencoderViT(**{**cfg, **kwargs})
