"""Unknown scorers: hand values and one orientation (higher = more unknown) for all."""

import math

import pytest
import torch

from uniframework.openset import SCORERS, make_scorer
from uniframework.openset.metrics import auroc
from uniframework.openset.scores import (
    KNNScorer,
    MahalanobisScorer,
    PoolKNNScorer,
    energy,
    energy_score,
    maxlogit_score,
    msp_score,
)


def test_energy_hand():
    assert energy(torch.zeros(1, 2)).item() == pytest.approx(-math.log(2))
    # T = 2: -2 * logsumexp([1, 1]) = -2 * (1 + log 2)
    assert energy(torch.full((1, 2), 2.0), 2.0).item() == pytest.approx(-2 * (1 + math.log(2)))
    assert torch.equal(energy_score(torch.ones(3, 4)), energy(torch.ones(3, 4)))


def test_logit_scores_orientation():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.05]])  # confident known, flat unknown
    for fn in (msp_score, maxlogit_score, energy_score):
        s = fn(logits)
        assert s.shape == (2,) and s[1] > s[0], fn.__name__


def test_msp_maxlogit_hand():
    logits = torch.tensor([[0.0, 0.0]])
    assert msp_score(logits).item() == pytest.approx(-0.5)
    assert maxlogit_score(torch.tensor([[1.0, 3.0]])).item() == -3.0


def test_mahalanobis_matches_explicit_quadratic_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5])
    y = torch.arange(60) % 3
    x = x + y[:, None].float() * 4
    scorer = MahalanobisScorer().fit(x, None, y)
    q = torch.randn(5, 3, generator=g).double()
    prec = scorer.whiten @ scorer.whiten.T
    diff = q[:, None, :] - scorer.means[None]  # [5, 3, D]
    ref = torch.einsum("ncd,de,nce->nc", diff, prec, diff).amin(1)
    assert torch.allclose(scorer.score(q.float()).double(), ref, rtol=1e-4)


def test_knn_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scorer = KNNScorer(k=2).fit(bank, None, None)
    # cosines to [1, 0]: 1, 0, 0.7071 -> 2nd nearest 0.7071
    assert scorer.score(torch.tensor([[3.0, 0.0]]), None).item() == pytest.approx(-(0.5**0.5))


def test_pool_knn_hand():
    known = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    pool = torch.tensor([[0.0, 1.0], [0.1, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, -1, -1, -1])
    scorer = PoolKNNScorer(k=2).fit(torch.cat([known, pool]), None, labels)
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # k-th (2nd) nearest cosine: [1, 0] to known {1, .995, 0} -> .995, to pool {0, .0995, .707}
    # -> .0995; [0, 1] to known {0, .0995, 1} -> .0995, to pool {1, .995, .707} -> .995
    c = 1 / (1.01**0.5)
    want = torch.tensor([0.1 * c - c, c - 0.1 * c])
    torch.testing.assert_close(scorer.score(q, None), want)
    again = PoolKNNScorer.from_state_dict(scorer.state_dict())
    torch.testing.assert_close(again.score(q, None), want)
    small = PoolKNNScorer(k=50).fit(torch.cat([known, pool]), None, labels)
    assert small.k == 3  # no more neighbours than the smaller bank holds
    with pytest.raises(ValueError, match="pool samples"):
        PoolKNNScorer().fit(known, None, torch.tensor([0, 0, 1]))


def _toy(n: int, seed: int):
    """Two known classes along e1, e2 and unknowns along e3; logits = first two coordinates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3 - 1  # -1 unknown, 0, 1
    centre = torch.zeros(n, 4)
    centre[y == 0, 0] = centre[y == 1, 1] = centre[y == -1, 2] = 5.0
    f = centre + 0.7 * torch.randn(n, 4, generator=g)
    return f, f[:, :2].clone(), y


def test_registry_and_make_scorer():
    assert set(SCORERS) >= {"msp", "maxlogit", "energy", "mahalanobis", "knn", "energy_weibull"}
    with pytest.raises(ValueError, match="unknown open-set scorer"):
        make_scorer("nope")


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_every_scorer_ranks_unknowns_higher(name):
    f, logits, y = _toy(240, seed=0)
    kw = {"k": 5} if name.startswith("knn") else {}
    known = y >= 0
    # feature scorers fit on knowns only; energy_weibull also sees the auto-labelled unknowns,
    # knn_pool the pool (label -1)
    fit_rows = slice(None) if name in ("energy_weibull", "knn_pool") else known
    scorer = make_scorer(name, **kw).fit(f[fit_rows], logits[fit_rows], y[fit_rows])
    f2, logits2, y2 = _toy(90, seed=1)
    s = scorer.score(f2, logits2)
    assert s.shape == (90,) and torch.isfinite(s).all()
    assert auroc(s, y2 == -1) > 0.95
