"""GCD's contrastive losses against hand-written references, and a few training steps."""

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from uniframework.config import ModelConfig
from uniframework.discover.gcd import (
    GCDModule,
    ProjectionHead,
    centre_head,
    info_nce_loss,
    supcon_loss,
)
from uniframework.discover.stage import DiscoverOptions
from uniframework.models import build_classifier


def _views(b, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    z2 = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return z1, z2


def _reference_info_nce(z1, z2, t):
    """A plain loop: anchor a among the 2B views, positive = the other view of its image."""
    z, b = torch.cat([z1, z2]).tolist(), len(z1)
    dot = lambda u, v: sum(p * q for p, q in zip(u, v))  # noqa: E731
    total = 0.0
    for a in range(2 * b):
        pos = (a + b) % (2 * b)
        denom = sum(math.exp(dot(z[a], z[j]) / t) for j in range(2 * b) if j != a)
        total += -math.log(math.exp(dot(z[a], z[pos]) / t) / denom)
    return total / (2 * b)


def _reference_supcon(z1, z2, labels, t):
    """Khosla et al. eq. 2 (L_out) by loops: -1/|P(a)| sum_p log softmax_{j != a}(z_a.z_j/t)_p."""
    z, y = torch.cat([z1, z2]).tolist(), labels.tolist() * 2
    n = len(z)
    dot = lambda u, v: sum(p * q for p, q in zip(u, v))  # noqa: E731
    total = 0.0
    for a in range(n):
        denom = sum(math.exp(dot(z[a], z[j]) / t) for j in range(n) if j != a)
        pos = [p for p in range(n) if p != a and y[p] == y[a]]
        total += -sum(math.log(math.exp(dot(z[a], z[p]) / t) / denom) for p in pos) / len(pos)
    return total / n


@pytest.mark.parametrize("t", [1.0, 0.5, 0.07])
def test_info_nce_matches_a_loop(t):
    z1, z2 = _views(6, 5)
    assert info_nce_loss(z1, z2, t).item() == pytest.approx(_reference_info_nce(z1, z2, t))


@pytest.mark.parametrize("t", [1.0, 0.07])
def test_supcon_matches_a_loop(t):
    z1, z2 = _views(7, 4, seed=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 3 alone: its only positive is a view
    ref = _reference_supcon(z1, z2, labels, t)
    assert supcon_loss(z1, z2, labels, t).item() == pytest.approx(ref)


def test_supcon_with_distinct_labels_is_info_nce():
    z1, z2 = _views(5, 3, seed=2)
    distinct = torch.arange(5)
    assert supcon_loss(z1, z2, distinct, 0.3).item() == pytest.approx(
        info_nce_loss(z1, z2, 0.3).item()
    )


def test_losses_ignore_the_order_of_the_batch_and_of_the_views():
    z1, z2 = _views(8, 6, seed=3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    perm = torch.randperm(8)
    a = info_nce_loss(z1, z2, 0.5)
    assert info_nce_loss(z1[perm], z2[perm], 0.5).item() == pytest.approx(a.item())
    assert info_nce_loss(z2, z1, 0.5).item() == pytest.approx(a.item())
    s = supcon_loss(z1, z2, labels, 0.1)
    assert supcon_loss(z1[perm], z2[perm], labels[perm], 0.1).item() == pytest.approx(s.item())
    assert supcon_loss(z2, z1, labels, 0.1).item() == pytest.approx(s.item())
    # relabelling the classes changes nothing either
    assert supcon_loss(z1, z2, (labels + 1) % 3 * 10, 0.1).item() == pytest.approx(s.item())


@pytest.mark.parametrize("t", [1.0, 0.07])
def test_aligned_views_with_orthogonal_negatives(t):
    # both views of image i = e_i: positive similarity 1, the 2B - 2 negatives 0
    b = 5
    z = torch.eye(b, 8, dtype=torch.float64)
    expected = math.log(1 + (2 * b - 2) * math.exp(-1 / t))  # -log(e^{1/t} / (e^{1/t} + 2B-2))
    assert info_nce_loss(z, z, t).item() == pytest.approx(expected)
    assert supcon_loss(z, z, torch.arange(b), t).item() == pytest.approx(expected)
    # at t = 0.07 that is about 0, the loss's minimum; misaligned views score far worse
    if t < 0.1:
        assert info_nce_loss(z, z, t).item() < 1e-5
        assert info_nce_loss(z, z.roll(1, 0), t).item() > 10


def test_supcon_is_lowest_when_classes_collapse():
    # two classes of two images: every view on its class's direction. An anchor's 3 positives
    # have similarity 1, its 4 negatives 0: loss = log(3 + 4 exp(-1/t)) ~ log 3, the minimum
    # for 3 positives; images spread on orthogonal directions score worse
    labels = torch.tensor([0, 0, 1, 1])
    e = torch.eye(2, dtype=torch.float64)
    collapsed = e[labels]
    spread = F.normalize(torch.eye(4, dtype=torch.float64), dim=1)
    low = supcon_loss(collapsed, collapsed, labels, 0.07).item()
    assert low == pytest.approx(math.log(3 + 4 * math.exp(-1 / 0.07)))
    assert low == pytest.approx(math.log(3), abs=1e-5)
    assert supcon_loss(spread, spread, labels, 0.07).item() > low


def test_projection_head_shape_and_unit_norm():
    head = ProjectionHead(16, 32, 24, bottleneck_dim=8)
    z = head(torch.randn(5, 16) * 100)  # un-normalised features go in
    assert z.shape == (5, 24)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)


def test_centre_head_predicts_the_nearest_centre_in_cosine():
    model = build_classifier(ModelConfig(backbone="resnet_tiny"), 8, 3)
    d = model.feature_dim
    centres = torch.randn(7, d) * torch.rand(7, 1) * 5  # any norms
    features = torch.randn(50, d)
    centre_head(model, centres)
    assert model.num_classes == 7 and torch.all(model.head.bias == 0)
    nearest = (F.normalize(features, dim=1) @ F.normalize(centres, dim=1).T).argmax(1)
    assert torch.equal(model.forward_head(features).argmax(1), nearest)


class _Synthetic(torch.utils.data.Dataset):
    """Two noisy views of per-class 8 px patterns: (view1, view2, label, index)."""

    def __init__(self, classes, per_class, hide_labels, seed):
        g = torch.Generator().manual_seed(seed)
        patterns = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(99))
        self.y = torch.tensor([c for c in classes for _ in range(per_class)])
        base = patterns[self.y] + 0.3 * torch.randn(len(self.y), 3, 8, 8, generator=g)
        self.v1 = base + 0.3 * torch.randn(base.shape, generator=g)
        self.v2 = base + 0.3 * torch.randn(base.shape, generator=g)
        self.hide = hide_labels

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.v1[i], self.v2[i], -1 if self.hide else int(self.y[i]), i


def _module(**gcd):
    opts = SimpleNamespace(**DiscoverOptions().model_dump())
    opts.lr, opts.warmup_epochs = 3e-3, 0.0
    for key, value in gcd.items():
        setattr(opts, key, value)
    model = build_classifier(ModelConfig(backbone="resnet_tiny"), 8, 2)
    return GCDModule(model, opts, num_known=2)


def test_module_reads_its_options_with_the_paper_defaults():
    module = _module()
    assert (module.sup_weight, module.temperature, module.sup_temperature) == (0.35, 1.0, 0.07)
    assert module.projector.last.out_features == 256
    module = _module(gcd_proj_dim=64, gcd_hidden_dim=128, gcd_sup_weight=0.5)
    assert module.projector.last.out_features == 64 and module.sup_weight == 0.5
    assert module.projector.mlp[0].out_features == 128


def test_a_few_training_steps_lower_the_loss(tmp_path):
    labelled = _Synthetic([0, 1], 16, hide_labels=False, seed=1)
    pool = _Synthetic([2, 3], 16, hide_labels=True, seed=2)
    loaders = {
        "labelled": torch.utils.data.DataLoader(labelled, batch_size=16, shuffle=True),
        "pool": torch.utils.data.DataLoader(pool, batch_size=16, shuffle=True),
    }
    fixed = {
        "labelled": next(iter(torch.utils.data.DataLoader(labelled, batch_size=32))),
        "pool": next(iter(torch.utils.data.DataLoader(pool, batch_size=32))),
    }
    module = _module(gcd_proj_dim=64, gcd_hidden_dim=128)
    head_before = module.model.head.weight.detach().clone()
    with torch.no_grad():
        before = [v.item() for v in module.losses(fixed)]
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loaders)
    with torch.no_grad():
        after = [v.item() for v in module.losses(fixed)]
    print("loss before / after (total, unsup, sup):", before, after)
    assert after[0] < before[0] - 0.05, (before, after)  # the total
    assert after[1] < before[1], (before, after)  # InfoNCE on every image
    assert after[2] < before[2], (before, after)  # SupCon on the labelled images
    for key in ("train_loss", "train_unsup_loss", "train_sup_loss"):
        assert key in trainer.logged_metrics
    # the classifier's head is no part of the loss: untouched (AdamW skips grad-less weights)
    assert torch.equal(module.model.head.weight, head_before)
