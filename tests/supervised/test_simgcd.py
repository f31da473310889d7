"""SimGCD's parametric classifier in the supervised stage (`simgcd_weight`): the losses against
hand-written references, the teacher's schedule, and a run that trains and throws it away."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uniframework.config import load_config
from uniframework.errors import UserError
from uniframework.io import load_weights
from uniframework.pipeline import run
from uniframework.supervised.simgcd import (
    PrototypeHead,
    mean_entropy_gap,
    self_distillation_loss,
    simgcd_loss,
    teacher_temperature,
)

from ..conftest import TINY


def test_the_teacher_temperature_follows_linspace_then_holds():
    warm = np.linspace(0.07, 0.04, 30)  # SimGCD's 30 warm-up epochs of 200
    got = [teacher_temperature(e, 200, 30 / 200) for e in range(40)]
    np.testing.assert_allclose(got[:30], warm)
    assert got[30:] == [0.04] * 10
    assert teacher_temperature(0, 10, 0.0) == 0.04  # no warm-up


def test_self_distillation_against_a_loop():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    terms = []
    for teacher, student in ((a, b), (b, a)):  # each view teaches the other, never itself
        q = torch.softmax(teacher / 0.05, dim=1)
        terms.append(
            torch.stack(
                [-(q[i] * torch.log_softmax(student[i] / 0.1, 0)).sum() for i in range(6)]
            ).mean()
        )
    torch.testing.assert_close(self_distillation_loss(a, b, 0.05), sum(terms) / 2)


def test_the_teacher_gets_no_gradient():
    a = torch.randn(5, 3, requires_grad=True)
    b = torch.randn(5, 3)
    self_distillation_loss(a, b, 0.04).backward()
    # only a's student term reaches a: its gradient equals that of the one direction
    a2 = a.detach().clone().requires_grad_(True)
    q = torch.softmax(b / 0.04, dim=1)
    (0.5 * -(q * torch.log_softmax(a2 / 0.1, dim=1)).sum(1).mean()).backward()
    torch.testing.assert_close(a.grad, a2.grad)


def test_the_mean_entropy_gap_is_zero_when_uniform_and_log_k_when_collapsed():
    k = 5
    spread = torch.eye(k) * 100  # each image sure of a different class: the mean is uniform
    assert mean_entropy_gap(spread).abs() < 1e-6
    collapsed = torch.zeros(8, k)
    collapsed[:, 2] = 100
    assert abs(mean_entropy_gap(collapsed).item() - math.log(k)) < 1e-5


def test_the_loss_is_the_papers_sum():
    torch.manual_seed(1)
    l1, l2 = torch.randn(8, 6), torch.randn(8, 6)
    y = torch.tensor([0, 1, 2])
    loss, parts = simgcd_loss(l1, l2, y, 3, 0.05, sup_weight=0.35, memax_weight=2.0)
    sup = F.cross_entropy(torch.cat([l1[:3], l2[:3]]) / 0.1, torch.cat([y, y]))
    probs = torch.softmax(torch.cat([l1, l2]) / 0.1, dim=1).mean(0)
    memax = math.log(6) + (probs * probs.log()).sum()
    distill = self_distillation_loss(l1, l2, 0.05)
    torch.testing.assert_close(parts["sup"], sup)
    torch.testing.assert_close(parts["memax"], memax)
    torch.testing.assert_close(loss, 0.65 * (distill + 2 * memax) + 0.35 * sup)


def test_the_prototypes_are_cosines():
    head = PrototypeHead(8, 4)
    x = torch.randn(3, 8)
    logits = head(10 * x)  # invariant to the features' scale
    torch.testing.assert_close(logits, head(x))
    assert logits.abs().max() <= 1 + 1e-6


def test_a_run_trains_the_prototypes_and_throws_them_away(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "data.num_known=5",
            "data.labelled_fraction=0.5",
            "trainer.max_epochs=4",
            "stages=[{supervised: {gcd_weight: 1.0, simgcd_weight: 1.0, lr: 0.003}}]",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert 0.2 < metrics["supervised.known_acc"] <= 1  # chance 0.2
    rows = list(csv.DictReader((tmp_path / "logs/supervised/csv/metrics.csv").open()))
    sup = [float(r["train_simgcd_sup"]) for r in rows if r.get("train_simgcd_sup")]
    memax = [float(r["train_simgcd_memax"]) for r in rows if r.get("train_simgcd_memax")]
    assert len(sup) == 4 and sup[-1] < sup[0]  # the labelled views learn their prototypes
    assert len(memax) == 4 and max(memax) < 0.5 * math.log(10)  # no collapse onto a few of 10
    kept, meta = load_weights(tmp_path / "checkpoints/supervised_simgcd.safetensors")
    assert kept["prototypes"].shape[0] == 10 and meta["num_known"] == 5  # for diagnostics


@pytest.mark.parametrize("gcd_weight,simgcd_weight", [(0.5, 0.0), (2.0, 0.7)])
def test_the_step_adds_the_weighted_losses_on_the_right_views(
    monkeypatch, gcd_weight, simgcd_weight
):
    """`_gcd_step` = gcd_weight * GCD + simgcd_weight * SimGCD, with the labelled images first
    in each view (the colour jitter made the identity, so the reference sees the same views)."""
    from uniframework.config import ModelConfig
    from uniframework.discover.gcd import info_nce_loss, supcon_loss
    from uniframework.models import build_classifier
    from uniframework.supervised import module as sm

    monkeypatch.setattr(sm, "batch_colour", lambda v, *a: v)
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone="resnet_tiny"), 16, 3, start=False)
    opts = sm.SupervisedOptions(gcd_weight=gcd_weight, simgcd_weight=simgcd_weight)
    module = sm.SupervisedModule(model, opts, 3, ([0.5] * 3, [0.25] * 3))
    module.log = lambda *a, **k: None
    module._trainer = type(  # epoch 0 of 10: teacher 0.07
        "T", (), {"max_epochs": 10, "max_steps": -1, "num_training_batches": 4, "current_epoch": 0}
    )()
    module.prototype_head = PrototypeHead(model.feature_dim, 6)  # (also when simgcd is off)
    xl1, xl2, xu1, xu2 = torch.randn(4, 4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    batch = {"labelled": (xl1, xl2, y, y), "pool": (xu1, xu2, y, y)}
    loss = module._gcd_step(batch)[0]
    f = model.forward_features(torch.cat([xl1, xu1, xl2, xu2]))  # [16, D]
    z = F.normalize(module.projector(f), dim=1)
    gcd = 0.65 * info_nce_loss(z[:8], z[8:], 0.5) + 0.35 * supcon_loss(z[:4], z[8:12], y, 0.07)
    logits = module.prototype_head(f)
    cls, _ = simgcd_loss(logits[:8], logits[8:], y, 4, 0.07, 0.35, 2.0)
    torch.testing.assert_close(loss, gcd_weight * gcd + simgcd_weight * cls)


def test_simgcd_without_the_views_is_refused():
    cfg = [*TINY, "stages=[{supervised: {simgcd_weight: 1.0}}]"]
    with pytest.raises(UserError, match="gcd_weight"):
        load_config(None, cfg)
