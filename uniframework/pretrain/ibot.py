"""iBOT (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022,
arXiv 2111.07832): masked image modelling with an *online tokenizer* — a teacher that is an
exponential moving average (EMA) of the student and gets no gradients.

Paper defaults: two global crops (+ optional local crops); the student sees block-wise masked
global crops (per image: unmasked, or masked with ratio ~ U(0.1, 0.5)) and unmasked local crops,
the teacher sees the unmasked global crops only; projection heads of 3 layers (hidden 2048,
GELU), L2-normalised bottleneck 256, weight-normalised last layer to K = 8192; teacher momentum
0.996 -> 1 (cosine); the loss (`ibot_loss.IBOTLoss`) = [CLS] self-distillation across views +
masked-patch self-distillation within a view. Recipe (set by the stage, not here): AdamW, lr
5e-4 * batch / 256, wd 0.04 -> 0.4 (cosine), gradient clipping 3.0, last layer frozen during
the first epoch, student drop path 0.1.

Where we follow the official code (bytedance/ibot) and where we do not:
- head sharing: as the official `main_ibot.py`, the student has its own patch last layer only
  when `shared_head=False` (official `--shared_head`, passed as true by every official recipe,
  our default too), and the teacher shares one last layer for [CLS] and patches unless
  `shared_head_teacher=False` (official `--shared_head_teacher`, default true); that shared layer
  is the EMA of the student's [CLS] last layer, as the official EMA matches parameters by name.
  `shared_head_teacher=False` gives the teacher a copy of the student's patch layer.
- block masks: the smallest block is the official `(min(h, w) // 3) ** 2` patches (16 on a
  14 x 14 grid, 4 on 8 x 8, 1 on 4 x 4; `min_num_patches` fixes it, e.g. BEiT's 4); see
  `masking.py` for why, and for how we finish the exact masked count where the official loop
  stops short.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch.nn.utils.parametrizations import weight_norm

from .ibot_loss import IBOTLoss, teacher_entropy, teacher_temp_schedule
from .masking import blockwise_mask

__all__ = [
    "IBOT",
    "IBOTHead",
    "IBOTLoss",
    "IBOTViT",
    "cosine_schedule",
    "ema_update",
    "ibot_masks",
    "ibot_vit_tiny_patch4",
    "make_teacher",
    "teacher_entropy",
    "teacher_temp_schedule",
]


def cosine_schedule(base: float, final: float, step: int, total_steps: int) -> float:
    """Half-cosine from `base` (step 0) to `final` (step >= total_steps); teacher momentum
    0.996 -> 1 over all training iterations in the paper."""
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))


def ibot_masks(
    batch: int,
    grid_size: int | tuple[int, int],
    ratio_range: tuple[float, float] = (0.1, 0.5),
    mask_prob: float = 0.5,
    generator: torch.Generator | None = None,
    min_num_patches: int | None = None,
) -> torch.Tensor:
    """iBOT masks for one global crop: [N, h, w] bool, True = masked.

    Each image is unmasked with probability 1 - mask_prob, else block-wise masked (BEiT) with
    ratio ~ U(ratio_range) (official `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`), in blocks of
    at least `min_num_patches` (None = official (min(h, w) // 3) ** 2).
    """
    lo, hi = ratio_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= lo <= hi <= 1, got {ratio_range}")
    masked = torch.rand(batch, generator=generator) < mask_prob
    ratios = lo + (hi - lo) * torch.rand(batch, generator=generator)
    ratios = (ratios * masked).tolist()
    return blockwise_mask(batch, grid_size, ratios, min_num_patches, generator=generator)


def make_teacher(student: nn.Module) -> nn.Module:
    """Teacher = a deep copy of the student with no gradients, in eval mode (no drop path:
    the official teacher is built without it)."""
    teacher = copy.deepcopy(student).eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter (matched by name).

    Student parameters the teacher lacks are skipped (official: the names in common): the
    student's own patch last layer when the teacher shares its [CLS] one.
    """
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if missing := t_params.keys() - s_params.keys():
        raise ValueError(f"teacher parameter names the student lacks: {sorted(missing)}")
    for name, t in t_params.items():
        t.mul_(momentum).add_(s_params[name].detach(), alpha=1 - momentum)


def _weight_normed_linear(in_dim: int, out_dim: int, norm_last_layer: bool) -> nn.Linear:
    """Linear (no bias) W = g * v / ||v|| per output row, g filled with 1 (frozen if asked)."""
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    g = layer.parametrizations.weight.original0  # [out_dim, 1]
    g.data.fill_(1.0)
    g.requires_grad_(not norm_last_layer)
    return layer


class IBOTHead(nn.Module):
    """Projection head for [CLS] and patch tokens: MLP -> L2 normalise -> weight-normed linear.

    Paper: nlayers 3, hidden 2048, bottleneck 256, out_dim = patch_out_dim = 8192 (defaults here
    are for tiny models). As in the official code the MLP is always shared by [CLS] and patch
    tokens; `shared_head=False` gives the patch tokens their own last layer, of patch_out_dim
    outputs (the official recipes use shared_head=True; the official teacher shares it anyway,
    see `IBOT`). norm_last_layer: keep g = 1 (frozen).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 512,
        patch_out_dim: int | None = None,
        hidden_dim: int = 256,
        bottleneck_dim: int = 64,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        shared_head: bool = True,
    ) -> None:
        super().__init__()
        patch_out_dim = out_dim if patch_out_dim is None else patch_out_dim
        if shared_head and patch_out_dim != out_dim:
            raise ValueError(f"shared_head needs patch_out_dim == out_dim, got {patch_out_dim}")
        self.out_dim, self.patch_out_dim = out_dim, patch_out_dim
        dims = [in_dim] + [hidden_dim] * (max(nlayers, 1) - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers += [nn.Linear(a, b)] + ([nn.GELU()] if i < len(dims) - 2 else [])
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = _weight_normed_linear(bottleneck_dim, out_dim, norm_last_layer)
        self.last_layer2 = (
            None
            if shared_head
            else _weight_normed_linear(bottleneck_dim, patch_out_dim, norm_last_layer)
        )

    def _bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.mlp(x), dim=-1, p=2)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] [CLS] features -> [N, out_dim]."""
        return self.last_layer(self._bottleneck(x))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: [N, 1 + L, D] ([CLS] first) -> cls [N, out_dim], patch [N, L, patch_out_dim]."""
        z = self._bottleneck(tokens)
        last2 = self.last_layer if self.last_layer2 is None else self.last_layer2
        return self.last_layer(z[:, 0]), last2(z[:, 1:])


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):  # official DINO / iBOT head init
        trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


class IBOTViT(VisionTransformer):
    """timm VisionTransformer (no classifier, one [CLS] token) with a learnable mask token.

    forward(x [N, C, H, W], mask [N, H/p, W/p] bool or None) -> all tokens [N, 1 + L, D] after
    the final norm, [CLS] first. Masked patch embeddings are replaced by the mask token before
    the position embedding is added (as the official `mask_model`). dynamic_img_size=True
    (default) resamples the position embedding, so local crops may be smaller than img_size.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"dynamic_img_size": True, **kwargs, "num_classes": 0})
        if self.cls_token is None or self.num_prefix_tokens != 1:
            raise ValueError("IBOTViT needs exactly one prefix token: the [CLS] token")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x)  # [N, h, w, D] (dynamic size) or [N, L, D]
        if mask is not None:
            if mask.numel() != x[..., 0].numel():
                raise ValueError(f"mask {tuple(mask.shape)} does not fit patches {x.shape[:-1]}")
            m = mask.reshape(x.shape[:-1]).unsqueeze(-1)
            x = torch.where(m, self.mask_token.to(x.dtype), x)
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))  # prepend cls, add pos-embed
        return self.norm(self.blocks(x))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}


class IBOT(nn.Module):
    """Student (backbone + head), teacher (EMA copy, no gradients, eval mode) and the loss.

    forward(global_crops, local_crops, masks, epoch): global_crops: ngcrops tensors [B, C, H, W];
    local_crops: nlcrops tensors [B, C, h, w] (may be empty); masks: ngcrops tensors
    [B, H/p, W/p] bool (see `random_masks`). Returns the loss dict of `IBOTLoss` plus
    `teacher_entropy` (detached, for collapse monitoring). The stage does the rest of a step:
    backward, gradient clipping (3.0), optimiser step, then `update_teacher(momentum)` with
    momentum = cosine_schedule(0.996, 1.0, step, total_steps).

    shared_head_teacher (official default True): the teacher's head uses its [CLS] last layer
    for the patch tokens too, even when the student's head has a patch layer of its own.
    min_num_patches: smallest masked block, None = official (min(h, w) // 3) ** 2.
    """

    def __init__(
        self,
        backbone: IBOTViT,
        head: IBOTHead,
        loss: IBOTLoss,
        ratio_range: tuple[float, float] = (0.1, 0.5),
        mask_prob: float = 0.5,
        min_num_patches: int | None = None,
        shared_head_teacher: bool = True,
    ) -> None:
        super().__init__()
        self.student = nn.ModuleDict(dict(backbone=backbone, head=head))
        self.teacher = make_teacher(self.student)
        t_head = self.teacher["head"]
        if shared_head_teacher and t_head.last_layer2 is not None:
            if t_head.patch_out_dim != t_head.out_dim:
                raise ValueError(
                    f"shared_head_teacher needs patch_out_dim == out_dim, got "
                    f"{t_head.patch_out_dim} != {t_head.out_dim}"
                )
            t_head.last_layer2 = None  # teacher patches through its [CLS] layer (EMA of the
            # student's [CLS] layer; the student's patch layer has no teacher twin)
        self.loss = loss
        self.ratio_range, self.mask_prob = ratio_range, mask_prob
        self.min_num_patches = min_num_patches

    def train(self, mode: bool = True) -> IBOT:
        super().train(mode)
        self.teacher.eval()  # the teacher is never stochastic
        return self

    def random_masks(
        self, batch: int, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """One `ibot_masks` tensor [B, H/p, W/p] per global crop."""
        grid = tuple(self.student.backbone.patch_embed.grid_size)
        return [
            ibot_masks(
                batch, grid, self.ratio_range, self.mask_prob, generator, self.min_num_patches
            )
            for _ in range(self.loss.ngcrops)
        ]

    def forward(
        self,
        global_crops: list[torch.Tensor],
        local_crops: list[torch.Tensor],
        masks: list[torch.Tensor],
        epoch: float,
    ) -> dict[str, torch.Tensor]:
        if (len(global_crops), len(local_crops)) != (self.loss.ngcrops, self.loss.nlcrops):
            raise ValueError(
                f"got {len(global_crops)} global / {len(local_crops)} local crops, the loss "
                f"expects {self.loss.ngcrops} / {self.loss.nlcrops}"
            )
        images, mask = torch.cat(global_crops), torch.cat(masks).to(global_crops[0].device)
        with torch.no_grad():  # the teacher sees the unmasked global crops only
            t_cls, t_patch = self.teacher.head(self.teacher.backbone(images))
        s_cls, s_patch = self.student.head(self.student.backbone(images, mask))
        # local crops: [CLS] only, never masked; one pass per crop size (as MultiCropWrapper)
        for _, group in itertools.groupby(local_crops, key=lambda x: x.shape[-2:]):
            tokens = self.student.backbone(torch.cat(list(group)))
            s_cls = torch.cat([s_cls, self.student.head.forward_cls(tokens[:, 0])])
        temp = self.loss.teacher_temps(epoch)[0]
        entropy = teacher_entropy(t_cls, temp, self.loss.center)  # before the center moves
        out = self.loss(s_cls, s_patch, t_cls, t_patch, mask.flatten(1), epoch)
        return {**out, "teacher_entropy": entropy}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step of the online tokenizer; call after the optimiser step."""
        ema_update(self.teacher, self.student, momentum)

    def backbone_state_dict(self, which: str = "teacher") -> dict[str, torch.Tensor]:
        """Backbone weights with timm names, mask token dropped; the teacher's by default (the
        official code evaluates the teacher)."""
        net = self.teacher if which == "teacher" else self.student
        return {k: v for k, v in net.backbone.state_dict().items() if k != "mask_token"}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"student.backbone." + k for k in self.student.backbone.no_weight_decay()}


def ibot_vit_tiny_patch4(
    img_size: int = 32,
    out_dim: int = 512,
    patch_out_dim: int | None = None,
    shared_head: bool = True,
    shared_head_teacher: bool = True,
    norm_last_layer: bool = True,
    hidden_dim: int = 256,
    bottleneck_dim: int = 64,
    nlcrops: int = 0,
    nepochs: int = 100,
    warmup_teacher_temp_epochs: int = 30,
    **kwargs: Any,
) -> IBOT:
    """iBOT with ViT-Ti/4 at 32 px (8x8 patches; local crops e.g. 16 px) and a small head
    (hidden 256, bottleneck 64, K = 512); `kwargs` override the ViT (embed_dim, depth, ...)."""
    cfg: dict[str, Any] = dict(
        patch_size=4, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1
    )
    backbone = IBOTViT(img_size=img_size, **{**cfg, **kwargs})
    head = IBOTHead(
        backbone.embed_dim, out_dim, patch_out_dim, hidden_dim, bottleneck_dim,
        norm_last_layer=norm_last_layer, shared_head=shared_head,
    )  # fmt: skip
    loss = IBOTLoss(
        out_dim, head.patch_out_dim, 2, nlcrops,
        warmup_teacher_temp_epochs=warmup_teacher_temp_epochs, nepochs=nepochs,
    )  # fmt: skip
    return IBOT(backbone, head, loss, shared_head_teacher=shared_head_teacher)
