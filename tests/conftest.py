"""Shared test helpers: tiny, fast configs on the embedded digits."""

from __future__ import annotations

import pytest
import torch

# Small, quick and deterministic: 8 px digits, a 1.2 M-parameter ResNet, 3 epochs.
TINY = [
    "data.dataset=digits",
    "data.image_size=8",
    "data.max_per_class=60",
    "data.batch_size=32",
    "model.backbone=resnet_tiny",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
