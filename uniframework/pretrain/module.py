"""Pretraining wiring: one small adapter class per method, the augmentation, the LightningModule.

A `Method` says how a paper's pure model (`mae.py`, `simmim.py`) is built to match the
configured backbone, its loss on a batch, which encoder weights it exports (timm names), how a
reconstruction figure is drawn, and the paper's recipe defaults. Adding a method = one class +
`@METHODS.register(name)`; `ibot_method.py` is one more: its `loss` reads the epoch for its
temperatures and returns extra `monitors`, `before_step` freezes its last layer, `after_step`
updates its EMA teacher, `transform` returns its multi-crop views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_info
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_weight_decay
from torchvision.transforms import v2

from ..config import ModelConfig
from ..data import ImageSet
from ..errors import UserError
from ..registry import Registry
from ..training import warmup_cosine
from .ibot import cosine_schedule
from .mae import MaskedAutoencoderViT
from .masking import simmim_mask_patch_size
from .simmim import SimMIM, SimMIMSwin, SimMIMViT

METHODS = Registry("pretraining method")


@dataclass(frozen=True)
class Recipe:
    """The training recipe after the paper defaults filled every option left None."""

    mask_ratio: float
    base_lr: float  # lr = base_lr * effective batch / 256 (MAE's linear scaling rule)
    weight_decay: float  # at the start; cosine per step to weight_decay_end (iBOT 0.04 -> 0.4)
    weight_decay_end: float
    betas: tuple[float, float]
    crop_scale: tuple[float, float]  # RandomResizedCrop scale range
    warmup_epochs: float
    clip_grad: float  # max gradient norm; 0 = off
    batch_size: int  # per device
    epochs: int


class Method:
    """Base adapter. `defaults`: the paper's recipe (keys of `Recipe`, `warmup_share` = warm-up
    epochs / total epochs); `backbones`: the timm classes the method can pretrain; `monitors`:
    keys of the loss dict logged per epoch, drawn with a k-NN curve and reported at the end;
    `clip_each_parameter`: clip each parameter's gradient norm on its own (DINO / iBOT) instead
    of the norm of all gradients together."""

    defaults: ClassVar[dict[str, Any]] = {}
    monitors: ClassVar[tuple[str, ...]] = ()
    clip_each_parameter: ClassVar[bool] = False
    backbones: ClassVar[tuple[type, ...]] = (VisionTransformer,)
    interpolation: ClassVar[v2.InterpolationMode] = v2.InterpolationMode.BILINEAR

    def __init__(self, opts: Any, recipe: Recipe) -> None:
        self.opts, self.recipe = opts, recipe

    def build(self, backbone: nn.Module, cfg: ModelConfig, image_size: int) -> nn.Module:
        raise NotImplementedError

    def loss(
        self, model: nn.Module, images: Any, progress: float, epoch: int = 0
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """images: what the transform made, batched; progress: step / total steps, in [0, 1];
        epoch: 0-based. A dict holds `loss` and the `monitors`. Default: the masked-image
        models' own `forward(images) -> (loss, ...)` (MAE, SimMIM)."""
        return model(images)[0]

    def before_step(self, model: nn.Module, epoch: int) -> None:
        """Called after backward, before gradient clipping and the optimizer step."""

    def after_step(self, model: nn.Module, progress: float) -> None:
        """Called after every optimizer step (EMA teachers)."""

    def encoder_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Encoder weights named as in the timm backbone (default: the model's own export)."""
        return model.encoder_state_dict()

    def reconstruct(
        self, model: nn.Module, images: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """images [N, C, H, W] (normalised) -> reconstruction [N, C, H, W] with the visible
        pixels pasted back, pixel mask [N, 1, H, W] (1 = masked); None = no figure."""
        return None

    def transform(self, base: ImageSet, size: int) -> v2.Compose:
        """uint8 [3, H, W] -> normalised float [3, size, size]: random resized crop (+ flip
        where the dataset allows it), the MAE / SimMIM augmentation; normalised as
        `data.make_transform`."""
        steps: list = [
            v2.RandomResizedCrop(
                size, scale=self.recipe.crop_scale, interpolation=self.interpolation, antialias=True
            )
        ]
        if base.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(base.mean, base.std)]
        return v2.Compose(steps)


def vit_geometry(vit: VisionTransformer) -> dict[str, Any]:
    """The constructor arguments that shape a timm ViT's weights, read off an instance."""
    block = vit.blocks[0]
    return dict(
        img_size=tuple(vit.patch_embed.img_size),
        patch_size=vit.patch_embed.patch_size[0],
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / vit.embed_dim,
    )


def swin_geometry(swin: SwinTransformer) -> dict[str, Any]:
    """The same for a timm Swin (window of the first stage: later ones are clamped alike)."""
    first = [stage.blocks[0] for stage in swin.layers]
    return dict(
        img_size=tuple(swin.patch_embed.img_size),
        patch_size=swin.patch_embed.patch_size[0],
        embed_dim=swin.embed_dim,
        depths=tuple(len(stage.blocks) for stage in swin.layers),
        num_heads=tuple(b.attn.num_heads for b in first),
        window_size=tuple(first[0].window_size),
        mlp_ratio=first[0].mlp.fc1.out_features / swin.embed_dim,
    )


def _pixel_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """mask [N, h, w] at the patch grid -> [N, 1, h*patch, w*patch] float."""
    return mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1).float()


@METHODS.register("mae")
class MAE(Method):
    """He et al., CVPR 2022 (arXiv 2111.06377), Table 8 / official `main_pretrain.py`: mask 0.75,
    AdamW base lr 1.5e-4, betas (0.9, 0.95), wd 0.05, warm-up 40 of 800 epochs, cosine, random
    resized crop (0.2, 1) bicubic + flip, no gradient clipping. Decoder: `decoder_depth` blocks
    of width `decoder_dim`, head width 32 (paper: 8 x 512, 16 heads, for ViT-B/L/H)."""

    defaults = dict(
        mask_ratio=0.75, base_lr=1.5e-4, betas=(0.9, 0.95), crop_scale=(0.2, 1.0),
        warmup_share=40 / 800, clip_grad=0.0, weight_decay=0.05,
    )  # fmt: skip
    interpolation = v2.InterpolationMode.BICUBIC

    def build(self, backbone: nn.Module, cfg: ModelConfig, image_size: int) -> nn.Module:
        if backbone.cls_token is None or backbone.num_prefix_tokens != 1:
            raise UserError(
                "stages.pretrain.method=mae needs a ViT with one class token and no register "
                "tokens: fix model.timm_kwargs"
            )
        g = vit_geometry(backbone)
        return MaskedAutoencoderViT(
            **g,
            decoder_embed_dim=self.opts.decoder_dim,
            decoder_depth=self.opts.decoder_depth,
            decoder_num_heads=self.opts.decoder_dim // 32,
            norm_pix_loss=self.opts.norm_pix_loss,
            mask_ratio=self.recipe.mask_ratio,
        )

    def reconstruct(
        self, model: nn.Module, images: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        devices = [images.device.index or 0] if images.is_cuda else []
        with torch.random.fork_rng(devices=devices):  # the same masks every epoch
            torch.manual_seed(seed)
            _, pred, mask = model(images)  # mask [N, L]
        pixel_mask = _pixel_mask(mask.reshape(-1, *model.grid_size), model.patch_size)
        return model.reconstruct(images, pred, mask), pixel_mask


@METHODS.register("simmim")
class SimMIMMethod(Method):
    """Xie et al., CVPR 2022 (arXiv 2111.09886), §4.1 and the official Swin-B config: mask 0.6 of
    32 px mask patches (`mask_patch_size`; default `simmim_mask_patch_size`: the paper's 32 px
    from 128 px up, image_size // 4 below: 8 px at 32 px; why in `masking.py`), AdamW base lr
    8e-4 at batch 2048 (= 1e-4 per 256; the official code scales by batch / 512 from 2e-4),
    betas (0.9, 0.999), wd 0.05, warm-up 10 of 100 epochs, cosine, gradient clipping 5.0,
    random resized crop (0.67, 1) + flip. ViT and Swin backbones."""

    defaults = dict(
        mask_ratio=0.6, base_lr=1e-4, betas=(0.9, 0.999), crop_scale=(0.67, 1.0),
        warmup_share=10 / 100, clip_grad=5.0, weight_decay=0.05,
    )  # fmt: skip
    backbones = (VisionTransformer, SwinTransformer)

    def build(self, backbone: nn.Module, cfg: ModelConfig, image_size: int) -> nn.Module:
        vit = isinstance(backbone, VisionTransformer)
        geometry = vit_geometry(backbone) if vit else swin_geometry(backbone)
        kwargs = {**geometry, "drop_path_rate": cfg.drop_path_rate, **cfg.timm_kwargs}
        encoder = (SimMIMViT if vit else SimMIMSwin)(**kwargs)
        stride, patch = encoder.encoder_stride, geometry["patch_size"]
        mask_patch = self.opts.mask_patch_size or simmim_mask_patch_size(image_size, patch)
        if image_size % stride or mask_patch % patch or image_size % mask_patch:
            raise UserError(
                f"stages.pretrain.mask_patch_size = {mask_patch} must be a multiple of the "
                f"model patch size {patch} and divide data.image_size = {image_size}, and the "
                f"image size must be a multiple of the encoder stride {stride}"
            )
        return SimMIM(
            encoder, stride, mask_patch_size=mask_patch, mask_ratio=self.recipe.mask_ratio
        )

    def reconstruct(
        self, model: nn.Module, images: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = model.random_mask(len(images), torch.Generator().manual_seed(seed))
        _, x_rec = model(images, mask.to(images.device))
        m = _pixel_mask(mask, model.patch_size).to(images)
        return images * (1 - m) + x_rec * m, m


class PretrainModule(L.LightningModule):
    """Trains a method's model: AdamW (no weight decay on biases, norms and the model's
    `no_weight_decay` names), lr = base_lr * batch * accumulation * devices / 256, linear
    warm-up then cosine per step, weight decay by cosine when the recipe asks (iBOT),
    gradient-norm clipping from the recipe; logs `train_loss` and the method's `monitors`."""

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__()
        self.model, self.method, self.recipe = model, method, method.recipe
        self.restored_means: dict[str, float] = {}  # the epoch means a checkpoint carried

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # this epoch's means (`train_loss`, the monitors): a rerun that finds the last epoch
        # already trained (a run killed after its last checkpoint) still reports them
        metrics = self.trainer.callback_metrics
        checkpoint["epoch_means"] = {k: float(v) for k, v in metrics.items() if v.numel() == 1}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restored_means = checkpoint.get("epoch_means", {})

    def _progress(self) -> float:
        return self.global_step / max(1, int(self.trainer.estimated_stepping_batches))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0]  # labels are hidden (-1) and never used
        out = self.method.loss(self.model, images, self._progress(), self.current_epoch)
        out = out if isinstance(out, dict) else {"loss": out}
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise UserError(
                f"the pretrain loss became {loss.item()} at step {self.global_step}: lower "
                "stages.pretrain.base_lr or set stages.pretrain.clip_grad"
            )
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False, sync_dist=True)
        for key, value in out.items():
            if key != "loss":  # epoch means, e.g. iBOT's teacher_entropy
                self.log(key, value, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        r = self.recipe
        if r.weight_decay_end != r.weight_decay:  # iBOT: 0.04 -> 0.4, per step, no warm-up
            total = int(self.trainer.estimated_stepping_batches)
            wd = cosine_schedule(r.weight_decay, r.weight_decay_end, self.global_step, total)
            for group in optimizer.param_groups:
                if group["weight_decay"] > 0:  # not the no-decay group (biases, norms, tokens)
                    group["weight_decay"] = wd
        self.method.before_step(self.model, self.current_epoch)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.after_step(self.model, self._progress())  # once per real step (accumulation)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        clip = gradient_clip_val or self.recipe.clip_grad  # trainer.gradient_clip_val wins
        if clip and self.method.clip_each_parameter and not gradient_clip_val:
            for p in self.model.parameters():  # DINO / iBOT utils.clip_gradients
                if p.grad is not None:
                    p.grad.mul_((clip / (p.grad.detach().norm(2) + 1e-6)).clamp(max=1.0))
        elif clip:
            self.clip_gradients(optimizer, clip, gradient_clip_algorithm or "norm")

    def configure_optimizers(self):
        r, t = self.recipe, self.trainer
        batch = r.batch_size * t.accumulate_grad_batches * t.world_size
        lr = r.base_lr * batch / 256
        rank_zero_info(f"pretrain: lr {lr:.3g} = base_lr {r.base_lr:g} * batch {batch} / 256")
        no_decay = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else ()
        groups = param_groups_weight_decay(self.model, r.weight_decay, no_decay)
        opt = torch.optim.AdamW(groups, lr=lr, betas=r.betas)
        total = int(t.estimated_stepping_batches)
        warmup = int(r.warmup_epochs * total / max(1, t.max_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
