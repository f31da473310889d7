"""OpenMix's reliable anchors: the Sinkhorn pseudo-label's confidence by default (measured),
the paper's rule (the network's own confidence) as an option."""

import warnings

import pytest
import torch
import torch.nn as nn

from uniframework.discover import openmix
from uniframework.discover.openmix import OpenMixModule, anchor_confidence, reliable_anchors
from uniframework.discover.sinkhorn import sinkhorn_knopp
from uniframework.discover.stage import DiscoverOptions
from uniframework.models.classifier import Classifier


def test_reliable_anchors_are_the_rows_at_or_above_the_threshold():
    probs = torch.tensor(
        [
            [0.95, 0.03, 0.02],  # confident -> anchor
            [0.50, 0.45, 0.05],  # torn between two classes
            [0.05, 0.05, 0.90],  # exactly at the threshold -> anchor (>=)
            [0.34, 0.33, 0.33],  # uniform
            [0.02, 0.97, 0.01],  # confident -> anchor
        ]
    )
    assert reliable_anchors(probs, 0.9).tolist() == [0, 2, 4]
    assert reliable_anchors(probs, 0.96).tolist() == [4]
    assert reliable_anchors(probs, 0.3).tolist() == [0, 1, 2, 3, 4]
    assert reliable_anchors(probs[1:2], 0.9).tolist() == []


def _disagreeing_batch():
    """k = 2 known, n = 3 novel outputs. The network is sure of rows 0 and 2 (novel logits far
    apart; the known logits are huge and must not count), the Sinkhorn pseudo-label only of
    row 1."""
    big = 10.0
    novel = torch.tensor([[big, 0.0, 0.0], [0.3, 0.2, 0.1], [0.0, 0.0, big]])
    known = torch.full((3, 2), 50.0)
    logits = torch.cat([known, novel], 1).requires_grad_()
    pseudo = torch.tensor([[0.4, 0.3, 0.3], [0.02, 0.96, 0.02], [0.5, 0.0, 0.5]])
    return logits, pseudo


def test_network_confidence_is_the_mean_softmax_of_both_views_over_the_novel_outputs():
    logits, pseudo = _disagreeing_batch()
    other = logits.detach().clone()
    other[0, 2:] = torch.tensor([0.0, 0.0, 0.0])  # the second view is unsure of row 0
    conf = anchor_confidence("network", logits, other, pseudo, num_known=2)
    expected = 0.5 * (logits[:, 2:].softmax(1) + other[:, 2:].softmax(1))
    assert torch.allclose(conf, expected.detach())
    assert not conf.requires_grad  # a selection rule: no gradient through it
    assert torch.allclose(conf.sum(1), torch.ones(3))
    # row 0: (~1 + 1/3) / 2 < 0.9 once one view hesitates; row 2 stays an anchor
    assert reliable_anchors(conf, 0.9).tolist() == [2]


def test_the_paper_rule_picks_anchors_and_their_class_by_the_networks_own_probability():
    o = DiscoverOptions(anchor_from="network")  # the paper's rule (OpenMix §3.3)
    logits, pseudo = _disagreeing_batch()
    conf = anchor_confidence(o.anchor_from, logits, logits, pseudo, num_known=2)
    anchors = reliable_anchors(conf, o.anchor_threshold)
    assert anchors.tolist() == [0, 2]
    assert conf[anchors].argmax(1).tolist() == [0, 2]  # the anchor's class: the same argmax
    # the default: the Sinkhorn pseudo-label's own confidence and class
    assert DiscoverOptions().anchor_from == "sinkhorn"
    default = anchor_confidence(DiscoverOptions().anchor_from, logits, logits, pseudo, 2)
    assert reliable_anchors(default, o.anchor_threshold).tolist() == [1]
    with pytest.raises(ValueError):
        DiscoverOptions(anchor_from="softmax")


class _Flat(nn.Sequential):
    num_features = 6


@pytest.mark.parametrize("source", ["network", "sinkhorn"])
def test_training_step_chooses_anchors_on_the_configured_distribution(monkeypatch, source):
    torch.manual_seed(0)
    k, n, b = 2, 3, 8
    model = Classifier(_Flat(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6)), k + n)
    opts = DiscoverOptions(anchor_from=source)
    module = OpenMixModule(model, opts, num_known=k)
    seen = []

    def spy(probs, threshold):
        seen.append(probs)
        return reliable_anchors(probs, threshold)

    monkeypatch.setattr(openmix, "reliable_anchors", spy)
    x = torch.randn(b, 3, 2, 2)
    batch = {
        "labelled": (x, x, torch.randint(0, k, (b,)), None),
        "pool": (x, x + 0.1 * torch.randn_like(x), None, None),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    (probs,) = seen
    xu1, xu2 = batch["pool"][:2]
    with torch.no_grad():  # the same weights and train-mode BatchNorm as inside the step
        (l1, c1), (l2, c2) = module.views(xu1), module.views(xu2)
    if source == "network":  # the head's own softmax over the novel outputs, both views
        expected = 0.5 * (l1[:, k:].softmax(1) + l2[:, k:].softmax(1))
    else:  # the Sinkhorn pseudo-label of the two views
        eps = opts.sinkhorn_epsilon
        expected = 0.5 * (sinkhorn_knopp(c1, eps) + sinkhorn_knopp(c2, eps))
    assert torch.allclose(probs, expected, atol=1e-5)
