"""GCD's representation loss in the supervised stage (`gcd_weight`): two views of every image,
labelled and unlabelled, from the first epoch."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from uniframework.config import load_config
from uniframework.discover.gcd import info_nce_loss
from uniframework.errors import UserError
from uniframework.io import load_weights
from uniframework.pipeline import run

from ..conftest import TINY


def test_the_views_loss_falls_and_the_classifier_file_stays_a_classifier(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "data.num_known=5",
            "data.labelled_fraction=0.5",
            "trainer.max_epochs=4",
            "stages=[{supervised: {gcd_weight: 1.0, lr: 0.003}}]",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert 0.2 < metrics["supervised.known_acc"] <= 1  # chance 0.2
    rows = list(csv.DictReader((tmp_path / "logs/supervised/csv/metrics.csv").open()))
    unsup = [float(r["train_unsup_loss"]) for r in rows if r.get("train_unsup_loss")]
    assert len(unsup) == 4 and all(0 < u <= 1.01 * math.log(2 * 64 - 1) for u in unsup)
    state, _ = load_weights(tmp_path / "checkpoints/supervised.safetensors")
    assert not any("projector" in key for key in state)  # the projection head is thrown away


def test_training_lowers_the_views_loss():
    """Steps of the module's own GCD loss on one batch (labelled + pool, two views each, the
    colour jitter drawn anew each step) lower its InfoNCE."""
    from uniframework.config import ModelConfig
    from uniframework.models import build_classifier
    from uniframework.supervised.module import SupervisedModule, SupervisedOptions

    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone="resnet_tiny"), 16, 3, start=False)
    module = SupervisedModule(
        model, SupervisedOptions(gcd_weight=1.0), 3, ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    )
    x = torch.randn(24, 3, 16, 16)
    y = torch.arange(24) % 3
    views = (x[:12] + 0.1 * torch.randn(12, 3, 16, 16), x[:12] + 0.1 * torch.randn(12, 3, 16, 16))
    pool = (x[12:] + 0.1 * torch.randn(12, 3, 16, 16), x[12:] + 0.1 * torch.randn(12, 3, 16, 16))
    batch = {"labelled": (*views, y[:12], torch.arange(12)), "pool": (*pool, y[12:], y[12:])}
    module.log = lambda *a, **k: None  # no trainer here
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    first = None
    for _ in range(20):
        loss = module._gcd_step(batch)[0]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.3


def test_info_nce_at_a_known_value():
    """Two views identical and orthogonal to the rest: each anchor's positive has logit 1 / T,
    its 2B - 2 negatives 0."""
    z = torch.eye(4)
    t = 0.5
    expected = -torch.log(torch.exp(torch.tensor(1 / t)) / (torch.exp(torch.tensor(1 / t)) + 6))
    torch.testing.assert_close(info_nce_loss(z, z.clone(), t), expected)


def test_the_pool_batch_can_be_larger_than_the_labelled_one(tmp_path, monkeypatch):
    """`pool_batch_size`: each step sees that many unlabelled images beside a labelled batch of
    `batch_size` (an epoch stays one pass over the labelled images)."""
    from uniframework.supervised.module import SupervisedModule

    sizes = []
    step = SupervisedModule._gcd_step

    def recording(self, batch):
        sizes.append((len(batch["labelled"][0]), len(batch["pool"][0])))
        return step(self, batch)

    monkeypatch.setattr(SupervisedModule, "_gcd_step", recording)
    cfg = load_config(
        None,
        [
            *TINY,
            "data.num_known=5",
            "data.labelled_fraction=0.5",
            "trainer.max_epochs=1",
            "stages=[{supervised: {gcd_weight: 1.0, pool_batch_size: 96}}]",
        ],
    )
    run(cfg, tmp_path)
    assert sizes and all(s == (32, 96) for s in sizes)
    # a pool batch so large that the pool runs out before the labelled images: refused
    cfg.stages[0]["supervised"]["pool_batch_size"] = 5000
    with pytest.raises(UserError, match="pool_batch_size = 5000"):
        run(cfg, tmp_path / "again")
