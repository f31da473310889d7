"""ORE energy + Weibull identifier: parameter recovery, decisions, state, errors."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import weibull_min

from uniframework.openset.weibull import EnergyWeibullScorer, WeibullIdentifier, fit_weibull


def _draw(shape, loc, scale, n, seed):
    return weibull_min.rvs(shape, loc=loc, scale=scale, size=n, random_state=seed)


def test_fit_recovers_parameters():
    p = fit_weibull(_draw(2.0, 1.0, 3.0, 5000, seed=0))
    assert p.shape == pytest.approx(2.0, abs=0.15)
    assert p.loc == pytest.approx(1.0, abs=0.1)
    assert p.scale == pytest.approx(3.0, abs=0.15)


def test_identifier_fits_negative_energy():
    x = _draw(2.0, 1.0, 3.0, 5000, seed=0)
    ident = WeibullIdentifier().fit(torch.from_numpy(-x))  # energies E = -x
    assert ident.known.loc == pytest.approx(1.0, abs=0.1)
    assert ident.unknown is None


def _separated():
    known = _draw(3.0, 5.0, 3.0, 800, seed=1)  # -E of knowns: about 5..11
    unknown = _draw(2.0, -1.0, 2.0, 800, seed=2)  # -E of unknowns: about -1..4
    return WeibullIdentifier().fit(torch.from_numpy(-known), torch.from_numpy(-unknown))


def test_predict_unknown_separated():
    ident = _separated()
    known = torch.from_numpy(-_draw(3.0, 5.0, 3.0, 500, seed=3))
    unknown = torch.from_numpy(-_draw(2.0, -1.0, 2.0, 500, seed=4))
    assert ident.predict_unknown(known).float().mean() < 0.05
    assert ident.predict_unknown(unknown).float().mean() > 0.95
    # -E = 8 typical known, -E = 1 typical unknown, -E = -5 below both supports -> unknown
    pred = ident.predict_unknown(torch.tensor([-8.0, -1.0, 5.0]))
    assert pred.tolist() == [False, True, True]
    s = ident.score(torch.tensor([-8.0, -1.0, 5.0]))
    assert torch.isfinite(s).all() and s[1] > 0 > s[0]


def test_state_dict_is_json_and_round_trips():
    ident = _separated()
    state = json.loads(json.dumps(ident.state_dict()))
    again = WeibullIdentifier.from_state_dict(state)
    e = torch.linspace(-12, 2, 30, dtype=torch.float64)
    assert torch.equal(again.score(e), ident.score(e))


def test_fallback_known_only():
    ident = WeibullIdentifier(alpha=0.05).fit(torch.from_numpy(-_draw(3.0, 5.0, 3.0, 2000, 5)))
    held_out = torch.from_numpy(-_draw(3.0, 5.0, 3.0, 2000, seed=6))
    assert ident.predict_unknown(held_out).float().mean() == pytest.approx(0.05, abs=0.02)
    assert ident.predict_unknown(torch.tensor([0.0, -20.0])).tolist() == [True, False]


def test_degenerate_input_raises():
    with pytest.raises(ValueError, match="all equal"):
        fit_weibull(np.full(100, 3.0))
    with pytest.raises(ValueError, match="at least 3"):
        fit_weibull([1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite"):
        fit_weibull([1.0, 2.0, float("nan")])


def test_energy_weibull_scorer_slices_and_uses_unknown_labels():
    g = torch.Generator().manual_seed(0)
    n = 300
    y = torch.arange(n) % 3 - 1  # -1 = auto-labelled unknown
    logits = torch.randn(n, 3, generator=g)
    logits[y >= 0, 0] += 6.0  # knowns confident on class 0
    logits[:, 2] = 100.0  # an explicit "unknown" output, sliced off by num_known=2
    scorer = EnergyWeibullScorer(num_known=2).fit(None, logits, y)
    assert scorer.identifier.unknown is not None
    pred = scorer.predict_unknown(logits)
    assert pred[y == -1].float().mean() > 0.9 and pred[y >= 0].float().mean() < 0.1
    again = EnergyWeibullScorer.from_state_dict(json.loads(json.dumps(scorer.state_dict())))
    assert torch.equal(again.score(None, logits), scorer.score(None, logits))
