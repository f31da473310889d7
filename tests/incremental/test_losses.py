"""LwF's and iCaRL's losses against hand computations; the NME classifier."""

import math

import torch

from uniframework.incremental.losses import icarl_loss, icarl_targets, lwf_distillation
from uniframework.incremental.nme import class_means, nme_predict


def test_lwf_distillation_by_hand():
    new, old = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 0.0]])
    # T = 2: y' = softmax([1, 0]), log yhat' = log_softmax([0.5, 1])
    y = [math.e / (math.e + 1), 1 / (math.e + 1)]
    z = math.log(math.exp(0.5) + math.exp(1.0))
    expected = -(y[0] * (0.5 - z) + y[1] * (1.0 - z))
    assert math.isclose(float(lwf_distillation(new, old, 2.0)), expected, rel_tol=1e-6)
    # the same logits give the entropy of y', the minimum; T scales nothing else
    same = lwf_distillation(old, old, 2.0)
    assert math.isclose(float(same), -sum(p * math.log(p) for p in y), rel_tol=1e-6)
    assert float(lwf_distillation(new, old, 2.0)) > float(same)


def test_icarl_loss_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]])
    labels = torch.tensor([2, 1])  # a new-class image and an old-class exemplar
    old = torch.tensor([[1.0, -2.0], [-1.0, 3.0]])

    def sig(v):
        return 1 / (1 + math.exp(-v))

    targets = [[sig(1.0), sig(-2.0), 1.0], [sig(-1.0), sig(3.0), 0.0]]
    total = 0.0
    for z_row, q_row in zip(logits.tolist(), targets):
        total -= sum(
            q * math.log(sig(z)) + (1 - q) * math.log(1 - sig(z)) for z, q in zip(z_row, q_row)
        )
    assert torch.allclose(icarl_targets(labels, old, 3), torch.tensor(targets))
    assert math.isclose(float(icarl_loss(logits, labels, old)), total / 2, rel_tol=1e-6)
    # task 0 (no old model): plain one-hot BCE
    assert torch.allclose(icarl_targets(labels, torch.zeros(2, 0), 3), torch.eye(3)[labels])


def test_nme_picks_the_nearest_normalised_class_mean():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
    means = class_means(feats, torch.tensor([0, 0, 1, 1]), 3)  # class 2: no exemplars
    assert torch.allclose(means.norm(dim=1), torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)
    query = torch.tensor([[5.0, 0.5], [0.2, 0.3], [1.0, -0.2]])  # scale does not matter
    assert nme_predict(query, means).tolist() == [0, 1, 0]
