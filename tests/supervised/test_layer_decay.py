"""Layer-wise lr decay (BEiT / MAE fine-tuning) in the supervised optimiser."""

from types import SimpleNamespace

import pytest
import torch

from uniframework.config import load_config
from uniframework.models import build_classifier
from uniframework.supervised.module import SupervisedModule, SupervisedOptions


def _module(layer_decay, backbone_args=()):
    cfg = load_config("configs/demo-mae.yaml", list(backbone_args))
    model = build_classifier(cfg.model, 16, 5)  # ViT-tiny, 6 blocks
    module = SupervisedModule(model, SupervisedOptions(lr=1e-3, layer_decay=layer_decay), 5)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    return module


def _lr_of(opt: torch.optim.Optimizer, param: torch.Tensor) -> tuple[float, float]:
    (group,) = [g for g in opt.param_groups if any(p is param for p in g["params"])]
    return group["initial_lr"], group["weight_decay"]  # "lr" is already scaled by the warm-up


def test_block_lrs_fall_geometrically_towards_the_input():
    module = _module(0.5)
    opt = module.configure_optimizers()["optimizer"]
    vit = module.model.backbone
    assert len(vit.blocks) == 6
    # as BEiT / MAE: block i of 6 at decay^(6 - i), the embeddings at decay^7, the head at 1
    assert _lr_of(opt, vit.patch_embed.proj.weight) == (pytest.approx(1e-3 * 0.5**7), 0.05)
    assert _lr_of(opt, vit.pos_embed)[1] == 0.0  # no weight decay on position embeddings
    for i, block in enumerate(vit.blocks):
        lr, wd = _lr_of(opt, block.mlp.fc1.weight)
        assert lr == pytest.approx(1e-3 * 0.5 ** (6 - i)) and wd == 0.05
        assert _lr_of(opt, block.norm1.weight) == (pytest.approx(lr), 0.0)  # 1-d: no decay
    assert _lr_of(opt, module.model.head.weight)[0] == pytest.approx(1e-3)
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(module.parameters()))  # every parameter exactly once


def test_without_layer_decay_one_group():
    opt = _module(None).configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["initial_lr"] == 1e-3
