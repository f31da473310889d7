"""UNO's over-clustering head beside OpenMix / the Sinkhorn head (`discover.overcluster`)."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uniframework.discover.openmix import OpenMixModule
from uniframework.discover.sinkhorn import sinkhorn_knopp
from uniframework.discover.stage import DiscoverOptions
from uniframework.discover.uno import UNOModule
from uniframework.models import Classifier


class _Flat(nn.Sequential):
    num_features = 6


def _model(k, n):
    return Classifier(_Flat(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6)), k + n)


def _batch(b, k):
    x = torch.randn(b, 3, 2, 2)
    return {
        "labelled": (x, x + 0.05 * torch.randn_like(x), torch.randint(0, k, (b,)), None),
        "pool": (x, x + 0.1 * torch.randn_like(x), None, None),
    }


def _step(module, batch, seed):
    torch.manual_seed(seed)  # the step's own draws (mixing coefficients, partners) alike
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        return module.training_step(batch, 0)


def test_the_head_has_factor_times_n_rows_and_is_not_part_of_the_saved_model():
    torch.manual_seed(0)
    k, n = 2, 3
    module = OpenMixModule(_model(k, n), DiscoverOptions(overcluster=4), num_known=k)
    assert module.over_head.weight.shape == (4 * n, 6)
    # random rows at the known rows' mean norm, so its logits start on the known ones' scale
    norms = module.over_head.weight.norm(dim=1)
    assert torch.allclose(norms, module.model.head.weight[:k].norm(dim=1).mean().expand(4 * n))
    assert not any(key.startswith("over_head") for key in module.model.state_dict())
    assert OpenMixModule(_model(k, n), DiscoverOptions(), num_known=k).over_head is None


def test_overcluster_loss_against_a_hand_computation():
    torch.manual_seed(1)
    k, n, b = 2, 3, 8
    module = OpenMixModule(_model(k, n), DiscoverOptions(overcluster=2), num_known=k)
    f1, f2 = torch.randn(b, 6), torch.randn(b, 6)
    known1, known2 = torch.randn(b, k), torch.randn(b, k)
    got = module.overcluster_loss(f1, f2, known1, known2)
    w, bias = module.over_head.weight.detach(), module.over_head.bias.detach()
    eps = DiscoverOptions().sinkhorn_epsilon

    def cos(f):
        return (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T

    total = 0.0
    for fa, ka, fb in ((f1, known1, f2), (f2, known2, f1)):
        q = sinkhorn_knopp(cos(fb), eps)  # the other view's balanced assignment [B, 2n]
        logp = F.log_softmax(torch.cat([ka, fa @ w.T + bias], 1), dim=1)[:, k:]
        total += -(q * logp).sum(1).mean() / 2
    assert torch.allclose(got, total, atol=1e-5)


@pytest.mark.parametrize("learner", [OpenMixModule, UNOModule])
def test_the_step_adds_exactly_the_overcluster_term(learner):
    torch.manual_seed(2)
    k, n, b = 2, 3, 8
    batch = _batch(b, k)
    model = _model(k, n)
    plain = learner(copy.deepcopy(model), DiscoverOptions(), num_known=k)
    over = learner(copy.deepcopy(model), DiscoverOptions(overcluster=3), num_known=k)
    base = _step(plain, batch, seed=5)
    with_head = _step(over, batch, seed=5)
    torch.manual_seed(5)
    with torch.no_grad():  # the term on the same weights and train-mode BatchNorm
        xu1, xu2 = batch["pool"][:2]
        l1, _, f1 = over.views_and_features(xu1)
        l2, _, f2 = over.views_and_features(xu2)
        term = over.overcluster_loss(f1, f2, l1[:, :k], l2[:, :k])
    assert term > 0
    assert torch.allclose(with_head, base + term, atol=1e-5)
    with_head.backward()  # the head learns: its rows get a gradient
    assert over.over_head.weight.grad is not None and over.over_head.weight.grad.abs().sum() > 0
