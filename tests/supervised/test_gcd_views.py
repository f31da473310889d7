"""GCD's representation loss in the supervised stage (`gcd_weight`): two views of every image,
labelled and unlabelled, from the first epoch."""

from __future__ import annotations

import csv

import torch

from uniframework.config import load_config
from uniframework.discover.gcd import info_nce_loss
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
    assert len(unsup) == 4 and unsup[-1] < unsup[0]  # InfoNCE over every image's two views
    state, _ = load_weights(tmp_path / "checkpoints/supervised.safetensors")
    assert not any("projector" in key for key in state)  # the projection head is thrown away


def test_info_nce_at_a_known_value():
    """Two views identical and orthogonal to the rest: each anchor's positive has logit 1 / T,
    its 2B - 2 negatives 0."""
    z = torch.eye(4)
    t = 0.5
    expected = -torch.log(torch.exp(torch.tensor(1 / t)) / (torch.exp(torch.tensor(1 / t)) + 6))
    torch.testing.assert_close(info_nce_loss(z, z.clone(), t), expected)
