"""The supervised stage's per-epoch unknown selection (`auto_label: known_weibull`): a rule
calibrated on the held-out knowns, re-selected from a frozen snapshot, reported against the
pool's hidden truth."""

import types

import torch
from torch import nn

from uniframework.config import load_config
from uniframework.pipeline import run
from uniframework.supervised.energy_bounded import energy_margin_loss
from uniframework.supervised.module import SupervisedOptions
from uniframework.supervised.unknown_selection import UnknownSelection

from ..conftest import TINY


class _Logits(nn.Module):
    """A 'model' whose inputs are already its logits."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward_features(self, x):
        return x * self.w

    def forward_head(self, f):
        return f


def _confident(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    x[torch.arange(n), torch.randint(0, 5, (n,), generator=g)] += 8.0
    return x


def _batches(x, index, size=16):
    return [(x[i : i + size], torch.zeros(0), index[i : i + size]) for i in range(0, len(x), size)]


def test_selection_takes_the_pool_images_unlike_the_held_out_knowns():
    val = _confident(100, 0)
    pool = torch.cat(
        [_confident(90, 1), torch.randn(10, 5, generator=torch.Generator().manual_seed(2))]
    )
    index = torch.arange(100) * 3 + 7  # dataset indices, not positions
    opts = SupervisedOptions(auto_label="known_weibull", unknown_start_epoch=1)
    cb = UnknownSelection(_batches(val, torch.arange(100)), _batches(pool, index), 400, opts, 5)
    module = types.SimpleNamespace(model=_Logits(), device=torch.device("cpu"))
    cb.on_train_epoch_start(types.SimpleNamespace(current_epoch=0), module)
    assert module.selected.shape == (400,) and not module.selected.any()  # before the start
    cb.on_train_epoch_start(types.SimpleNamespace(current_epoch=1), module)
    picked = torch.nonzero(module.selected).flatten()
    novel = set((torch.arange(90, 100) * 3 + 7).tolist())
    assert novel <= set(picked.tolist())  # every flat-logit image is taken...
    assert len(picked) <= 10 + 9  # ...and at most ~alpha of the known-like ones
    assert set(picked.tolist()) <= set(index.tolist())  # only pool images


def test_margin_loss_without_outliers_keeps_the_known_term():
    known = torch.tensor([[0.0, 0.0]])  # E = -log 2
    got = energy_margin_loss(known, torch.zeros(0, 2), -2.0, 0.0)
    assert torch.isfinite(got) and abs(got.item() - (2 - 0.6931471805599453) ** 2) < 1e-6


def test_a_mixed_pool_run_reports_the_selection(tmp_path):
    cfg = load_config(
        "configs/demo-novel.yaml",
        [
            *TINY,
            "data.labelled_fraction=0.5",
            "stages.supervised.auto_label=known_weibull",
            "stages.supervised.unknown_start_epoch=1",
        ],
    )
    cfg = cfg.model_copy(update={"stages": cfg.stages[:1]})
    m = run(cfg, tmp_path)
    assert m["supervised.auto_unknowns"] > 0
    assert 0.0 <= m["supervised.auto_unknown_precision"] <= 1.0
    assert 0.0 < m["supervised.auto_unknown_recall"] <= 1.0
