"""iBOT as `method: ibot` of the pretrain stage: the paper's recipe, multi-crop views, the last
layer frozen in the first epoch, per-parameter clipping, and a tiny pretrain -> supervised run
that exports the teacher's encoder."""

import csv
import logging
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import uniframework.pretrain.stage  # noqa: F401  (registers the stage and the ibot method)
from uniframework.config import load_config
from uniframework.data import ImageSet
from uniframework.io import load_matching, load_weights
from uniframework.models import build_backbone
from uniframework.pipeline import run
from uniframework.pretrain.module import METHODS, PretrainModule
from uniframework.pretrain.stage import PretrainOptions, build_method_model, make_recipe

from .test_stage import VIT


def ibot(epochs: int = 2, **opts):
    """The ibot method and its model for the test ViT (16 px, patch 4, 2 blocks)."""
    cfg = load_config("configs/demo-novel.yaml", VIT)
    o = PretrainOptions(method="ibot", out_dim=64, **opts)
    method = METHODS.get("ibot")(o, make_recipe(o, METHODS.get("ibot").defaults, epochs, 4))
    return method, build_method_model(method, "ibot", build_backbone(cfg.model, 16), cfg)


def last_layer(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.student.named_parameters() if "last_layer" in n}


def test_paper_recipe():
    opts = PretrainOptions(method="ibot")
    r = make_recipe(opts, METHODS.get("ibot").defaults, max_epochs=100, batch=64)
    assert (r.base_lr, r.weight_decay, r.weight_decay_end) == (5e-4, 0.04, 0.4)
    assert (r.crop_scale, r.clip_grad, r.betas) == ((0.14, 1.0), 3.0, (0.9, 0.999))
    assert r.warmup_epochs == pytest.approx(10.0) and r.mask_ratio == 0.3
    assert (opts.teacher_momentum, opts.teacher_temp, opts.shared_head) == (0.996, 0.07, True)
    mae = make_recipe(PretrainOptions(), METHODS.get("mae").defaults, 100, 64)
    assert mae.weight_decay == mae.weight_decay_end == 0.05  # constant for MAE / SimMIM


def test_official_head_sharing_and_block_minimum_by_default():
    opts = PretrainOptions(method="ibot")
    assert (opts.shared_head, opts.shared_head_teacher, opts.min_num_patches) == (True, True, None)
    _, model = ibot(shared_head=False)  # student: a patch layer of its own; teacher: shared
    assert model.student.head.last_layer2 is not None and model.teacher.head.last_layer2 is None
    assert model.min_num_patches is None  # = (min(h, w) // 3) ** 2 in blockwise_mask
    _, model = ibot(shared_head=False, shared_head_teacher=False, min_num_patches=4)
    assert model.teacher.head.last_layer2 is not None and model.min_num_patches == 4


@pytest.mark.parametrize("epochs, warm", [(2, 1), (10, 3), (100, 30), (800, 30)])
def test_teacher_temperature_warmup_scales_with_the_run(epochs, warm):
    method, model = ibot(epochs)
    assert model.loss.warmup_teacher_temp_epochs == warm
    assert model.loss.teacher_temps(0) == (0.04, 0.04)
    assert model.loss.teacher_temps(epochs) == (0.07, 0.07)
    assert model.ratio_range == pytest.approx((0.1, 0.5)) and model.mask_prob == 0.5


def test_multi_crop_views_collate_into_a_list_of_batches():
    method, _ = ibot(local_crops=3)
    base = ImageSet(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2), ["0"])
    views = method.transform(base, 16)(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    # 2 global crops at 16 px, 3 local crops at 16 * 96 / 224 = 6.9 -> 8 px (2 x 2 patches)
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 3
    batch = next(iter(DataLoader([(views, -1, 0)] * 4, batch_size=4)))
    assert [tuple(v.shape) for v in batch[0]] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3


def test_last_layer_gradient_is_dropped_in_epoch_0_only():
    method, model = ibot()
    images = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    for epoch in (0, 1):
        model.zero_grad()
        method.loss(model, images, 0.0, epoch)["loss"].backward()
        method.before_step(model, epoch)
        grads = [p.grad for p in last_layer(model).values() if p.requires_grad]
        assert grads  # the weight-normalised direction v (g is fixed at 1)
        if epoch == 0:
            assert all(g is None for g in grads)  # official: p.grad = None, no update at all
        else:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        assert model.student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


class Crops(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return (torch.randn(3, 16, 16), torch.randn(3, 16, 16)), -1, i


class Snapshots(L.Callback):
    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.weights.append({n: p.detach().clone() for n, p in last_layer(pl_module.model).items()})


def test_training_freezes_the_last_layer_during_the_first_epoch():
    method, model = ibot()
    snaps = Snapshots()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps],
    )  # fmt: skip
    trainer.fit(PretrainModule(model, method), DataLoader(Crops(), batch_size=4))
    snaps.on_train_epoch_start(trainer, trainer.lightning_module)  # after the last epoch
    start, after_0, after_1 = snaps.weights
    for name, w in start.items():
        assert torch.equal(w, after_0[name]), name  # frozen in epoch 0
    assert any(not torch.equal(after_0[n], after_1[n]) for n in start)  # trained in epoch 1


def test_each_parameter_is_clipped_on_its_own():
    method, model = ibot()
    module = PretrainModule(model, method)
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 1.0 if i % 2 else 1e-4)
    before = [p.grad.norm().item() for p in params]
    module.configure_gradient_clipping(None)
    for b, p in zip(before, params, strict=True):
        assert p.grad.norm().item() == pytest.approx(min(b, 3.0), rel=1e-4)


def test_ibot_then_supervised(tmp_path, caplog):
    stages = (
        "stages=[{pretrain: {method: ibot, out_dim: 256, local_crops: 2, "
        "linear_probe_iters: 0}}, {supervised: {}}]"
    )
    cfg = load_config("configs/demo-novel.yaml", [*VIT, stages])
    with caplog.at_level(logging.INFO):
        metrics = run(cfg, tmp_path)
    assert metrics["pretrain.knn_acc"] > 0.3  # chance 0.2
    assert math.isfinite(metrics["pretrain.final_loss"])
    # no collapse: the teacher's [CLS] entropy stays away from 0 (max log 256 = 5.5 nats)
    with open(tmp_path / "logs" / "pretrain" / "csv" / "metrics.csv") as f:
        entropies = [float(r["teacher_entropy"]) for r in csv.DictReader(f)]
    assert len(entropies) == 2 and min(entropies) > 1.0
    assert metrics["pretrain.teacher_entropy"] == pytest.approx(entropies[-1])
    assert (tmp_path / "pretrain" / "ibot_curves.png").stat().st_size > 0
    ckpt = torch.load(tmp_path / "checkpoints" / "pretrain" / "last.ckpt", weights_only=True)
    history = ckpt["callbacks"]["EpochCurves"]["history"]
    assert history["epoch"] == [1, 2] and all(0 <= a <= 1 for a in history["knn_acc"])
    # the export is the teacher's encoder, strict in the configured backbone
    weights = tmp_path / "checkpoints" / "pretrain.safetensors"
    state, meta = load_weights(weights)
    assert meta["method"] == "ibot" and "mask_token" not in state
    load_matching(build_backbone(cfg.model, 16), state, str(weights))
    model = ckpt["state_dict"]
    for key, value in state.items():
        assert torch.equal(value, model[f"model.teacher.backbone.{key}"]), key
    assert any(not torch.equal(v, model[f"model.student.backbone.{k}"]) for k, v in state.items())
    assert f"backbone starts from {weights}" in caplog.text
