"""iBOT as a `method` of the pretrain stage (Zhou et al., "iBOT: Image BERT Pre-Training with
Online Tokenizer", ICLR 2022, arXiv 2111.07832); the model and loss are `ibot.py` /
`ibot_loss.py`, this file only wires them into `PretrainModule`.

Recipe (paper §4 / appendix and the official `main_ibot.py`; tiny-model scalings marked):
- data: 2 global crops, random resized crop (0.14, 1) at image_size, bicubic; `local_crops`
  local crops (0.05, 0.4) at image_size * 96 / 224 rounded to the patch size (paper: 10 crops
  of 96 px; default 0 here for speed); DINO's colour augmentation (below);
- masks: per global crop and image, unmasked or block-wise masked with ratio ~ U(r - 0.2, r + 0.2)
  with probability 0.5, r = `mask_ratio` = 0.3 (official `--pred_ratio 0 0.3 --pred_ratio_var 0
  0.2`), in blocks of at least `min_num_patches` = the official (min(h, w) // 3) ** 2 patches
  (16 at 224 px / 16; here 4 at 32 px / 4, 1 at 16 px / 4); local crops are never masked;
- AdamW lr 5e-4 * batch / 256, betas (0.9, 0.999), warm-up 10 of 100 epochs then cosine; weight
  decay 0.04 -> 0.4 by cosine per step; each parameter's gradient clipped to norm 3.0 on its own
  (DINO / iBOT `utils.clip_gradients`); the head's last layer frozen during the first epoch
  (`freeze_last_layer` 1);
- teacher: EMA of the student, momentum 0.996 -> 1 by cosine over all steps, updated after each
  optimiser step; temperatures: student 0.1, teacher 0.04 -> `teacher_temp` 0.07 linearly over 30
  of the paper's 100 epochs, scaled here to the same share, round(0.3 * epochs), at most 30;
- heads: 3-layer MLP (hidden 256, bottleneck 64; paper 2048, 256) and a weight-normalised last
  layer of `out_dim` outputs (paper 8192), shared by [CLS] and patches (`shared_head`, true in
  the official recipes); with `shared_head: false` the student gets a patch layer of its own
  and the teacher still shares one (`shared_head_teacher`, official default true);
- evaluation and export: the teacher's encoder (the official k-NN / linear evaluations use it).

DDP: `IBOTLoss` all-reduces the batch means that move its centers, so they stay equal on every
rank; the EMA teacher needs no communication: DDP keeps the student weights identical on every
rank after each optimiser step, and every rank applies the same momentum to the same teacher.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torchvision.transforms import v2

from ..config import ModelConfig
from ..data import ImageSet
from ..errors import UserError
from .ibot import IBOT, IBOTHead, IBOTLoss, IBOTViT, cosine_schedule
from .module import METHODS, Method, vit_geometry

LOCAL_CROP_SCALE = (0.05, 0.4)  # official --local_crops_scale
MASK_RATIO_VAR = 0.2  # official --pred_ratio_var: masked images get ratio ~ U(r -/+ 0.2)
FREEZE_LAST_LAYER_EPOCHS = 1  # official --freeze_last_layer
TEACHER_TEMP_WARMUP = (0.04, 30 / 100)  # start temperature, share of the paper's 100 epochs


class MultiCrop:
    """uint8 [3, H, W] -> (global 1, global 2, local 1, ..., local n) normalised float crops.

    As the official `DataAugmentationiBOT`: flip (where the dataset allows it), colour jitter
    (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, then Gaussian blur with p 1.0 (global 1),
    0.1 + solarisation 0.2 (global 2), 0.5 (local); blur sigma (0.1, 2.0) px at 224 px, scaled
    with the crop size.
    """

    def __init__(
        self,
        base: ImageSet,
        size: int,
        local_size: int,
        nlocal: int,
        scale: tuple[float, float],
        interp: v2.InterpolationMode,
    ) -> None:
        def crop(px: int, crop_scale: tuple, blur: float, solarize: float = 0.0) -> v2.Compose:
            sigma = (0.1 * px / 224, 2.0 * px / 224)
            kernel = 2 * math.ceil(3 * sigma[1]) + 1
            steps = [v2.RandomResizedCrop(px, crop_scale, interpolation=interp, antialias=True)]
            steps += [v2.RandomHorizontalFlip()] if base.hflip else []
            steps += [
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([v2.GaussianBlur(kernel, sigma)], p=blur),
                v2.RandomSolarize(128, p=solarize),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(base.mean, base.std),
            ]
            return v2.Compose(steps)

        self.global1 = crop(size, scale, blur=1.0)
        self.global2 = crop(size, scale, blur=0.1, solarize=0.2)
        self.local = crop(local_size, LOCAL_CROP_SCALE, blur=0.5)
        self.nlocal = nlocal

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        local = [self.local(image) for _ in range(self.nlocal)]
        return (self.global1(image), self.global2(image), *local)


@METHODS.register("ibot")
class IBOTMethod(Method):
    """iBOT on a timm ViT: recipe in the module docstring. The loss dict adds `cls_loss`,
    `patch_loss` and `teacher_entropy` (logged per epoch; collapse drives the entropy to 0)."""

    defaults = dict(
        mask_ratio=0.3, base_lr=5e-4, betas=(0.9, 0.999), crop_scale=(0.14, 1.0),
        warmup_share=10 / 100, clip_grad=3.0, weight_decay=0.04, weight_decay_end=0.4,
    )  # fmt: skip
    interpolation = v2.InterpolationMode.BICUBIC
    monitors = ("teacher_entropy",)
    clip_each_parameter = True
    patch_size: int | None = None  # set by `build`; the local crop size is a multiple of it

    def build(self, backbone: nn.Module, cfg: ModelConfig, image_size: int) -> nn.Module:
        g = vit_geometry(backbone)
        # the student's drop path is model.drop_path_rate (paper 0.1); the teacher has none
        encoder = IBOTViT(**{**g, "drop_path_rate": cfg.drop_path_rate, **cfg.timm_kwargs})
        o, r = self.opts, self.recipe
        head = IBOTHead(encoder.embed_dim, o.out_dim, o.out_dim, shared_head=o.shared_head)
        start, share = TEACHER_TEMP_WARMUP
        loss = IBOTLoss(
            o.out_dim, o.out_dim, ngcrops=2, nlcrops=o.local_crops, warmup_teacher_temp=start,
            teacher_temp=o.teacher_temp, nepochs=r.epochs,
            warmup_teacher_temp_epochs=min(30, max(1, round(share * r.epochs)), r.epochs),
        )  # fmt: skip
        ratio = (max(0.0, r.mask_ratio - MASK_RATIO_VAR), min(1.0, r.mask_ratio + MASK_RATIO_VAR))
        self.patch_size = g["patch_size"]
        return IBOT(
            encoder, head, loss, ratio_range=ratio, mask_prob=0.5,
            min_num_patches=o.min_num_patches, shared_head_teacher=o.shared_head_teacher,
        )  # fmt: skip

    def loss(
        self, model: nn.Module, images: Any, progress: float, epoch: int = 0
    ) -> dict[str, torch.Tensor]:
        """images: the collated `MultiCrop` output, 2 + local_crops tensors [B, 3, h, w]."""
        crops = list(images)
        masks = model.random_masks(len(crops[0]))  # 2 x [B, H/p, W/p], True = masked
        out = model(crops[:2], crops[2:], masks, epoch)
        return {
            "loss": out["loss"],
            "cls_loss": out["cls"].detach(),
            "patch_loss": out["patch"].detach(),
            "teacher_entropy": out["teacher_entropy"],
        }

    def before_step(self, model: nn.Module, epoch: int) -> None:
        # official cancel_gradients_last_layer runs after clipping: the same, as clipping here
        # is per parameter
        if epoch < FREEZE_LAST_LAYER_EPOCHS:
            for name, p in model.student.named_parameters():
                if "last_layer" in name:
                    p.grad = None  # no update at all, not even weight decay

    def after_step(self, model: nn.Module, progress: float) -> None:
        # cosine over all steps, progress = step / total steps
        m = cosine_schedule(self.opts.teacher_momentum, 1.0, step=progress, total_steps=1)
        model.update_teacher(m)

    def encoder_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.backbone_state_dict("teacher")

    def transform(self, base: ImageSet, size: int) -> MultiCrop:
        if self.patch_size is None:
            raise UserError("internal: IBOTMethod.build must run before transform")
        p = self.patch_size
        local = max(p, round(size * 96 / 224 / p) * p)
        return MultiCrop(
            base, size, local, self.opts.local_crops, self.recipe.crop_scale, self.interpolation
        )
