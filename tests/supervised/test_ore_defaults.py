"""The supervised stage's ORE defaults — prototype schedule and feature space."""

from types import SimpleNamespace

import pytest
import torch

from uniframework.config import load_config
from uniframework.errors import UserError
from uniframework.models import build_classifier
from uniframework.supervised.module import SupervisedModule, SupervisedOptions

from ..conftest import TINY


def test_defaults_pinned():
    o = SupervisedOptions()
    assert o.prototype_every is None and o.prototype_every_fraction == 3000 / 18000  # OWOD
    assert o.contrastive_features == "raw" and o.margin == 10.0  # the paper's loss
    unit = SupervisedOptions(contrastive_features="normalised")
    assert unit.margin == 1.0  # on the unit sphere
    assert unit.model_copy(update={"contrastive_margin": 0.5}).margin == 0.5


def test_unmeetable_normalised_margin_is_a_user_error():
    with pytest.raises(UserError, match="at most 2"):
        load_config(
            "configs/demo-novel.yaml",
            [
                "stages.supervised.contrastive_features=normalised",
                "stages.supervised.contrastive_margin=10",
            ],
        )


def _updates(opts: SupervisedOptions, total: int) -> tuple[int, list[int]]:
    """(interval, steps at which the prototypes changed) over a simulated run of `total` steps."""
    cfg = load_config("configs/demo-novel.yaml", TINY)
    model = build_classifier(cfg.model, 8, 3)
    module = SupervisedModule(model, opts, 3)
    module._trainer = SimpleNamespace(
        estimated_stepping_batches=total, global_step=0, current_epoch=0
    )
    module.on_train_start()
    changed = []
    for step in range(total):
        module._trainer.global_step = step
        before = module.prototypes.clone()
        module._prototype_step(torch.randn(6, model.feature_dim), torch.arange(6) % 3)
        if not torch.equal(before, module.prototypes):
            changed.append(step)
    return module.prototype_interval, changed


def test_prototypes_follow_owod_ratio_by_default():
    opts = SupervisedOptions(contrastive=True, contrastive_start_epoch=0)
    interval, changed = _updates(opts, 600)
    # as OWOD's task 1 (18,000 iterations): the start, then five updates, one every sixth
    assert interval == 100 and changed == [0, 100, 200, 300, 400, 500]


def test_absolute_interval_stays_available():
    opts = SupervisedOptions(contrastive=True, contrastive_start_epoch=0, prototype_every=10)
    interval, changed = _updates(opts, 600)
    assert interval == 10 and changed == list(range(0, 600, 10))
