"""Energy-bounded learning (Liu et al. 2020) as a supervised option."""

import math

import pytest
import torch

from uniframework.config import load_config
from uniframework.errors import UserError
from uniframework.openset.scores import energy
from uniframework.pipeline import RunContext, run
from uniframework.supervised.energy_bounded import energy_margin_loss
from uniframework.training import extract

from ..conftest import TINY


def test_energy_margin_loss_against_hand_computation():
    known = torch.tensor([[3.0, 0.0], [0.0, 0.0]])  # E = -log(e^3 + 1), -log 2
    outlier = torch.tensor([[1.0, 1.0], [-4.0, -4.0]])  # E = -1 - log 2, 4 - log 2
    m_in, m_out = -2.0, 0.0
    e_in = [-math.log(math.exp(3) + 1), -math.log(2)]
    e_out = [-1 - math.log(2), 4 - math.log(2)]
    want = (
        sum(max(0, e - m_in) ** 2 for e in e_in) / 2
        + sum(max(0, m_out - e) ** 2 for e in e_out) / 2
    )
    got = energy_margin_loss(known, outlier, m_in, m_out)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # inside both margins there is nothing to pay
    assert energy_margin_loss(known + 10, outlier - 10, m_in, m_out).item() == 0.0


def test_margins_must_be_ordered():
    with pytest.raises(UserError, match="m_in < m_out"):
        load_config("configs/demo-novel.yaml", ["stages.supervised.energy_margins=[-3, -7]"])


def test_energy_margins_separate_pool_from_known(tmp_path):
    """The margins push the pool images' energy (the auto-labelled unknowns: here every pool
    image, the batch is the top-k) well above the labelled ones', far more than cross-entropy
    alone does (same seed, same epochs). At this tiny scale (8 px, 60 images per class) the
    effect on *unseen* novel images is small; the demo's is in BENCHMARKS.md."""
    gaps = {}
    for name, extra in {
        "plain": ["stages.supervised.energy_margins=null"],
        "margins": ["stages.supervised.energy_margins=[-7,-3]"],
    }.items():
        cfg = load_config(
            "configs/demo-novel.yaml",
            [*TINY, "trainer.max_epochs=4", "stages.supervised.unknown_topk=64", *extra],
        )
        cfg = cfg.model_copy(update={"stages": cfg.stages[:1]})
        run(cfg, tmp_path / name)
        ctx = RunContext(cfg, tmp_path / name)
        model, _ = ctx.load_classifier("supervised")
        e = {
            part: energy(extract(model, ctx.data.loader(ctx.data.view(part)))["logits"]).mean()
            for part in ("labelled", "unlabelled")
        }
        gaps[name] = float(e["unlabelled"] - e["labelled"])
    assert gaps["margins"] > 0.3 and gaps["margins"] > 3 * gaps["plain"], gaps


def test_margins_without_a_pool_name_the_fix(tmp_path):
    cfg = load_config("configs/demo-novel.yaml", [*TINY, "data.num_known=10", "data.num_tasks=1"])
    with pytest.raises(UserError, match="need an unlabelled pool: set data.num_known below"):
        run(cfg, tmp_path)
