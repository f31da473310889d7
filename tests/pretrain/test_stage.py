"""The pretrain stage: weighted k-NN and linear probe, method models that export into the
configured backbone, clear errors, and tiny end-to-end runs on the embedded digits."""

import csv
import logging
import math

import pytest
import torch

import uniframework.pretrain.stage  # noqa: F401  (registers the stage; PLUGINS will list it)
from uniframework.config import load_config, save_config
from uniframework.errors import UserError
from uniframework.io import load_matching, load_weights
from uniframework.models import build_backbone
from uniframework.pipeline import run
from uniframework.pretrain.evaluation import knn_classify, linear_probe
from uniframework.pretrain.module import METHODS, PretrainModule
from uniframework.pretrain.stage import PretrainOptions, build_method_model, make_recipe

from ..conftest import TINY

# vit_tiny cut to 2 blocks, 16 px digits, patch 4 (16 tokens), 30 images per class, 2 epochs
VIT = [
    *TINY,
    "model.backbone=vit_tiny",
    "model.timm_kwargs={depth: 2}",
    "data.image_size=16",
    "model.patch_size=4",
    "data.max_per_class=30",
    "trainer.max_epochs=2",
]
SWIN = [
    *TINY,
    "model.backbone=swin_tiny_patch4_window7_224",
    "model.timm_kwargs={img_size: 16, patch_size: 2, window_size: 4, embed_dim: 24, "
    "depths: [1, 1], num_heads: [1, 2]}",
    "data.image_size=16",
]


def naive_knn(train, labels, query, k, temperature, num_classes):
    """The DINO / iBOT weighted k-NN written out one query at a time."""
    out = []
    for q in query:
        sims = [float(q @ t / (q.norm() * t.norm())) for t in train]
        nearest = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[int(labels[i])] += math.exp(sims[i] / temperature)
        out.append(max(range(num_classes), key=votes.__getitem__))
    return torch.tensor(out)


def test_knn_by_hand():
    # query (1, 0.2): cosine 0.981 to (1, 0) [class 0], 0.832 to (1, 1) and 0.196 to (0, 1)
    # [class 1]. k = 3: T = 0.07 gives e^14.0 vs e^11.9 + e^2.8 -> class 0 (the nearest wins);
    # T = 1 gives e^0.981 = 2.67 vs e^0.832 + e^0.196 = 3.51 -> class 1 (the majority wins).
    train = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.2]])
    assert knn_classify(train, labels, query, k=3, temperature=0.07).tolist() == [0]
    assert knn_classify(train, labels, query, k=3, temperature=1.0).tolist() == [1]
    assert knn_classify(train, labels, query, k=1, temperature=1.0).tolist() == [0]


def test_knn_matches_naive_reimplementation():
    g = torch.Generator().manual_seed(0)
    train, query = torch.randn(40, 6, generator=g), torch.randn(25, 6, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    want = naive_knn(train, labels, query, 7, 0.07, 4)
    got = knn_classify(train, labels, query, k=7, temperature=0.07, num_classes=4, chunk=4)
    assert torch.equal(got, want)


def test_perfect_clusters_give_accuracy_one():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 10
    labels = torch.arange(5).repeat_interleave(30)
    train = centres[labels] + torch.randn(150, 16, generator=g) * 0.1
    test_labels = torch.arange(5).repeat(4)
    test = centres[test_labels] + torch.randn(20, 16, generator=g) * 0.1
    assert torch.equal(knn_classify(train, labels, test, k=20, temperature=0.07), test_labels)
    assert linear_probe(train, labels, test, test_labels) == 1.0


@pytest.mark.parametrize(
    "method, want",
    [
        ("mae", dict(mask_ratio=0.75, base_lr=1.5e-4, betas=(0.9, 0.95), crop_scale=(0.2, 1.0))),
        ("simmim", dict(mask_ratio=0.6, base_lr=1e-4, betas=(0.9, 0.999), crop_scale=(0.67, 1))),
    ],
)
def test_paper_defaults_fill_the_recipe(method, want):
    opts = PretrainOptions(method=method)
    recipe = make_recipe(opts, METHODS.get(method).defaults, max_epochs=100, batch=64)
    assert {k: getattr(recipe, k) for k in want} == want
    assert recipe.weight_decay == 0.05
    assert recipe.warmup_epochs == pytest.approx(5.0 if method == "mae" else 10.0)
    mine = make_recipe(
        PretrainOptions(method=method, mask_ratio=0.4, warmup_epochs=2),
        METHODS.get(method).defaults,
        100,
        64,
    )
    assert mine.mask_ratio == 0.4 and mine.warmup_epochs == 2


def test_unknown_method_is_named():
    with pytest.raises(UserError, match="did you mean 'mae'"):
        load_config("configs/demo-novel.yaml", [*TINY, "stages=[{pretrain: {method: maee}}]"])


@pytest.mark.parametrize(
    "method, overrides",
    [("mae", VIT), ("simmim", VIT), ("simmim", SWIN)],
    ids=["mae-vit", "simmim-vit", "simmim-swin"],
)
def test_method_model_trains_and_exports_into_the_backbone(method, overrides):
    cfg = load_config("configs/demo-novel.yaml", overrides)
    opts = PretrainOptions(method=method, decoder_dim=32, decoder_depth=1)
    cls = METHODS.get(method)
    m = cls(opts, make_recipe(opts, cls.defaults, 2, 4))
    model = build_method_model(m, method, build_backbone(cfg.model, 16), cfg)
    loss = m.loss(model, torch.randn(4, 3, 16, 16), 0.0)
    loss.backward()
    assert torch.isfinite(loss) and model.training
    fresh = build_backbone(cfg.model, 16)
    load_matching(fresh, m.encoder_state(model), "test")  # strict: every key, every shape
    recon, mask = m.reconstruct(model, torch.randn(2, 3, 16, 16), seed=0)
    assert recon.shape == (2, 3, 16, 16) and mask.shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    ("size", "patch", "option", "want"),
    [
        (224, 16, None, 32),  # the paper's 32 px mask patch
        (192, 16, None, 32),  # (was 48)
        (32, 4, None, 8),  # below 128 px: a quarter of the side (4 x 4 mask patches)
        (16, 4, None, 4),
        (224, 16, 16, 16),  # stages.pretrain.mask_patch_size is honoured
        (224, 8, 56, 56),  # the old 224 px default, on request (not a multiple of 16)
    ],
)
def test_simmim_mask_patch_default_and_option(size, patch, option, want):
    over = [f"data.image_size={size}", f"model.patch_size={patch}", "model.timm_kwargs={depth: 1}"]
    cfg = load_config("configs/demo-novel.yaml", [*VIT, *over])
    opts = PretrainOptions(method="simmim", mask_patch_size=option)
    m = METHODS.get("simmim")(opts, make_recipe(opts, METHODS.get("simmim").defaults, 2, 4))
    model = build_method_model(m, "simmim", build_backbone(cfg.model, size), cfg)
    assert model.mask_patch_size == want
    mask = model.random_mask(2, torch.Generator().manual_seed(0))  # [N, H/p, W/p]
    assert mask.shape == (2, size // patch, size // patch)
    blocks = mask[:, :: want // patch, :: want // patch]  # one entry per mask patch
    assert blocks.flatten(1).sum(1).tolist() == [math.ceil(0.6 * blocks[0].numel())] * 2


def test_backbone_the_method_cannot_pretrain_is_refused():
    cfg = load_config("configs/demo-novel.yaml", TINY)  # resnet_tiny
    opts = PretrainOptions(method="mae")
    m = METHODS.get("mae")(opts, make_recipe(opts, METHODS.get("mae").defaults, 2, 4))
    with pytest.raises(UserError, match="mae needs a VisionTransformer backbone"):
        build_method_model(m, "mae", build_backbone(cfg.model, 8), cfg)


def epoch_losses(run_dir):
    with open(run_dir / "logs" / "pretrain" / "csv" / "metrics.csv") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")]


def test_mae_then_supervised(tmp_path, caplog):
    stages = (
        "stages=[{pretrain: {method: mae, decoder_dim: 32, decoder_depth: 1}}, {supervised: {}}]"
    )
    cfg = load_config("configs/demo-novel.yaml", [*VIT, stages])
    with caplog.at_level(logging.INFO):
        metrics = run(cfg, tmp_path)
    for key in ("knn_acc", "linear_acc", "final_loss"):
        assert math.isfinite(metrics[f"pretrain.{key}"])
    assert metrics["pretrain.knn_acc"] > 0.3 and metrics["pretrain.linear_acc"] > 0.3  # chance 0.2
    assert (tmp_path / "pretrain" / "recon_epoch002.png").stat().st_size > 0
    weights = tmp_path / "checkpoints" / "pretrain.safetensors"
    state, meta = load_weights(weights)
    assert meta["method"] == "mae"
    load_matching(build_backbone(cfg.model, 16), state, str(weights))
    assert f"backbone starts from {weights}" in caplog.text
    first, second = epoch_losses(tmp_path)
    assert second < first and metrics["pretrain.final_loss"] == pytest.approx(second)


def test_simmim(tmp_path):
    stages = "stages=[{pretrain: {method: simmim, linear_probe_iters: 0, figures: true}}]"
    cfg = load_config("configs/demo-novel.yaml", [*VIT, stages])
    metrics = run(cfg, tmp_path)
    assert math.isfinite(metrics["pretrain.knn_acc"]) and math.isnan(metrics["pretrain.linear_acc"])
    assert (tmp_path / "pretrain" / "recon_epoch001.png").is_file()
    state, meta = load_weights(tmp_path / "checkpoints" / "pretrain.safetensors")
    assert meta["method"] == "simmim" and "mask_token" not in state
    load_matching(build_backbone(cfg.model, 16), state, "simmim export")
    first, second = epoch_losses(tmp_path)
    assert second < first


def test_nan_loss_is_a_user_error():
    cfg = load_config("configs/demo-novel.yaml", VIT)
    opts = PretrainOptions(method="mae", decoder_dim=32, decoder_depth=1)
    m = METHODS.get("mae")(opts, make_recipe(opts, METHODS.get("mae").defaults, 2, 4))
    module = PretrainModule(build_method_model(m, "mae", build_backbone(cfg.model, 16), cfg), m)
    module._progress = lambda: 0.0  # no Trainer attached
    batch = (torch.full((2, 3, 16, 16), float("nan")), torch.tensor([-1, -1]), torch.arange(2))
    with pytest.raises(UserError, match="pretrain loss became nan"):
        module.training_step(batch, 0)


def test_cut_off_pretrain_resumes_from_last_ckpt(tmp_path, caplog):
    stages = "stages=[{pretrain: {decoder_dim: 32, linear_probe_iters: 0, figures: false}}]"
    run(load_config("configs/demo-novel.yaml", [*VIT, stages, "trainer.max_epochs=1"]), tmp_path)
    # as if a 2-epoch run had been killed after its first epoch: its config, no finished stage
    full = load_config("configs/demo-novel.yaml", [*VIT, stages])
    save_config(full, tmp_path / "config.yaml")
    (tmp_path / "state.json").unlink()
    with caplog.at_level(logging.INFO):
        metrics = run(full, tmp_path)
    assert "resuming from" in caplog.text and math.isfinite(metrics["pretrain.knn_acc"])
    logs = tmp_path / "logs" / "pretrain"
    with open(logs / "csv-2" / "metrics.csv") as f:  # the resumed run's log, beside the first
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]  # only the missing epoch ran
    with open(logs / "csv" / "metrics.csv") as f:  # the cut-off run's rows are kept
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]
