"""The `pretrain` stage: self-supervised pretraining on every train image, no labels.

Trains the method (`mae` | `simmim` | `ibot`, see `module.METHODS`) on the labelled, val and
unlabelled train images with their labels hidden, then exports the encoder as weights of the
configured backbone (`build_backbone(cfg.model, image_size)`, strict: every key, every shape) to
`checkpoints/pretrain.safetensors`, where the `supervised` stage picks them up. Also writes
`checkpoints/pretrain/last.ckpt` (resume), `logs/pretrain/` and, per epoch,
`pretrain/recon_epoch{N:03d}.png` (MAE, SimMIM). Metrics: `final_loss` (mean loss of the last
epoch), the frozen-feature `knn_acc` / `linear_acc` on the known test images (`evaluation.py`)
and the method's `monitors` (iBOT: `teacher_entropy`, the last epoch's mean), which are also
drawn per epoch with a k-NN accuracy curve on a small fixed subset to
`pretrain/<method>_curves.png`.

Augmentation is the method's own (random resized crop over `crop_scale`, flip where the dataset
allows it; iBOT: multi-crop with colour augmentation); `data.augment` does not apply here. A
Swin backbone (SimMIM only) is any timm Swin name with its geometry in `model.timm_kwargs`; the
encoder is read off that model, so the pretrain stage needs no architecture options of its own.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch.nn as nn

from ..config import Config
from ..data import UNKNOWN, OpenWorldData, View, make_transform
from ..errors import UserError
from ..io import load_matching
from ..models import build_backbone
from ..registry import STAGES
from ..training import fit, make_trainer
from . import ibot_method  # noqa: F401  (registers method "ibot")
from .evaluation import evaluate
from .figures import EpochCurves, ReconstructionFigures
from .module import METHODS, Method, PretrainModule, Recipe
from .options import PretrainOptions

log = logging.getLogger(__name__)


def make_recipe(opts: PretrainOptions, defaults: dict, max_epochs: int, batch: int) -> Recipe:
    """Fill every option left None from the method's paper defaults."""

    def pick(key: str):
        value = getattr(opts, key)
        return defaults[key] if value is None else value

    warmup, wd, wd_end = opts.warmup_epochs, pick("weight_decay"), opts.weight_decay_end
    return Recipe(
        mask_ratio=pick("mask_ratio"),
        base_lr=pick("base_lr"),
        weight_decay=wd,
        weight_decay_end=defaults.get("weight_decay_end", wd) if wd_end is None else wd_end,
        betas=tuple(pick("betas")),
        crop_scale=tuple(pick("crop_scale")),
        warmup_epochs=defaults["warmup_share"] * max_epochs if warmup is None else warmup,
        clip_grad=pick("clip_grad"),
        batch_size=batch,
        epochs=max_epochs,
    )


def pretrain_view(data: OpenWorldData, transform) -> View:
    """Every train image (labelled + val + unlabelled), labels hidden."""
    s = data.split
    idx = np.sort(np.concatenate([s.labelled, s.val, s.unlabelled]))
    return View(data.train, idx, np.full(len(idx), UNKNOWN), transform)


def build_method_model(method: Method, name: str, backbone: nn.Module, cfg: Config) -> nn.Module:
    """The method's model matching `backbone`; checks now, before training, that its encoder
    exports into the backbone (UserError naming the mismatch otherwise)."""
    size, model_cfg = cfg.data.image_size, cfg.model
    if not isinstance(backbone, method.backbones):
        kinds = " or ".join(c.__name__ for c in method.backbones)
        raise UserError(
            f"stages.pretrain.method={name} needs a {kinds} backbone (vit_tiny, vit_small, "
            f"vit_base or a timm model of that class); model.backbone={model_cfg.backbone} is a "
            f"{type(backbone).__name__}. Change model.backbone or remove the pretrain stage."
        )
    if tuple(backbone.patch_embed.img_size) != (size, size):
        raise UserError(
            f"model.backbone={model_cfg.backbone} is built for {backbone.patch_embed.img_size} "
            f"px but data.image_size = {size}: set model.timm_kwargs.img_size={size}"
        )
    try:
        model = method.build(backbone, model_cfg, size)
    except (TypeError, ValueError) as err:
        raise UserError(f"stages.pretrain.method={name}: cannot build the model ({err})") from None
    try:
        load_matching(backbone, method.encoder_state(model), f"pretrain.{name} encoder")
    except UserError as err:
        raise UserError(
            f"stages.pretrain.method={name} cannot build an encoder that matches "
            f"model.backbone={model_cfg.backbone} with model.timm_kwargs={model_cfg.timm_kwargs}: "
            f"{err}"
        ) from None
    return model


@STAGES.register("pretrain")
class PretrainStage:
    """Masked image modelling (MAE, SimMIM, iBOT) on Lightning; hands the encoder to
    `supervised`."""

    Options = PretrainOptions

    @staticmethod
    def run(ctx, opts: PretrainOptions) -> dict[str, float]:
        cfg, data = ctx.cfg, ctx.data
        size, max_epochs = cfg.data.image_size, opts.max_epochs or cfg.trainer.max_epochs
        cls = METHODS.get(opts.method)
        recipe = make_recipe(opts, cls.defaults, max_epochs, cfg.data.batch_size)
        method = cls(opts, recipe)
        # the method builds its encoder afresh, so the backbone loads no start weights (no hub)
        backbone = build_backbone(cfg.model, size, start=False)
        if cfg.model.starts_pretrained or cfg.model.weights:
            log.warning(
                "pretrain: its encoder starts from random weights, not model.weights / "
                "model.pretrained; the later stages start from those, not from this encoder"
            )
        model = build_method_model(method, opts.method, backbone, cfg)
        view = pretrain_view(data, method.transform(data.train, size))
        trainer = make_trainer(cfg.trainer, ctx.run_dir, "pretrain", max_epochs, monitor=None)
        if opts.figures:
            clean = make_transform(data.train, size, train=False)
            pick = view.indices[np.linspace(0, len(view) - 1, min(8, len(view))).astype(int)]
            images = [clean(data.train.load(int(i))) for i in pick]
            figs = ReconstructionFigures(method, images, data.train, ctx.run_dir / "pretrain")
            trainer.callbacks.insert(0, figs)  # before ModelCheckpoint, which must stay last
        if opts.figures and method.monitors:  # iBOT: teacher entropy and k-NN accuracy
            path = ctx.run_dir / "pretrain" / f"{opts.method}_curves.png"
            trainer.callbacks.insert(0, EpochCurves(method, backbone, data, opts, path))
        log.info(
            "pretrain: %s on %d train images (labels hidden), %s encoder, %s -> %s",
            opts.method,
            len(view),
            cfg.model.backbone,
            recipe,
            ctx.run_dir,
        )
        module = PretrainModule(model, method)
        fit(trainer, module, data.loader(view, train=True), None)
        if trainer.is_global_zero:
            load_matching(backbone, method.encoder_state(model), "pretrained encoder")
            path = ctx.save_model("pretrain", backbone, method=opts.method, recipe=asdict(recipe))
            log.info("pretrain: encoder weights -> %s", path)
        trainer.strategy.barrier("pretrain-export")  # later stages on every rank read the file
        if not trainer.is_global_zero:
            return {}
        # the last epoch's means: this fit's, or its checkpoint's when no epoch was left to train
        last = {**module.restored_means, **trainer.callback_metrics}
        metrics = {
            key: float(last[name]) if name in last else float("nan")
            for key, name in [("final_loss", "train_loss")] + [(m, m) for m in method.monitors]
        }
        metrics |= evaluate(backbone, data, opts, trainer.strategy.root_device)
        return metrics
