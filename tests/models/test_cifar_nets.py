"""The small fast CNNs for 32 px images (models/cifar_nets.py)."""

import pytest
import torch
import torch.nn.functional as F

from uniframework.config import ModelConfig
from uniframework.models import build_backbone, build_classifier
from uniframework.models.cifar_nets import FastCNN

PARAMS = {"resnet9": 6.57e6, "resnet9_half": 1.64e6, "airbench": 1.97e6}
WIDTH = {"resnet9": 512, "resnet9_half": 256, "airbench": 256}


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("size", [16, 32, 40])
def test_features_at_any_size(name, size):
    net = build_backbone(ModelConfig(backbone=name), size).eval()
    assert isinstance(net, FastCNN) and net.num_features == WIDTH[name]
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, WIDTH[name])


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    net = build_backbone(ModelConfig(backbone=name), 32)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(PARAMS[name], rel=0.01)


def test_features_are_scaled_and_dropout_follows_drop_rate():
    net = build_backbone(ModelConfig(backbone="resnet9_half", drop_rate=0.5), 16)
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        pooled = torch.amax(net.stages(net.stem(x)), dim=(2, 3))
        torch.testing.assert_close(net(x), pooled * 0.125)
    net.train()
    assert (net(x) == 0).float().mean() > 0.2  # dropout on the features while training
    net.drop_rate = 0.0  # what progressive learning's scheduler sets
    assert (net(x) == 0).float().mean() < 0.2


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_a_classifier_trains(name):
    torch.manual_seed(0)
    clf = build_classifier(ModelConfig(backbone=name), 16, num_classes=3)
    x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 3
    opt = torch.optim.SGD(clf.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_flip_tta_averages_mirror_features_in_eval_only():
    net = build_backbone(ModelConfig(backbone="airbench", timm_kwargs={"flip_tta": True}), 16)
    plain = build_backbone(ModelConfig(backbone="airbench"), 16)
    plain.load_state_dict(net.state_dict())
    x = torch.randn(3, 16, 16).expand(2, 3, 16, 16).clone()
    x[1] = x[0].flip(2)  # an image and its mirror image get the same features
    net.eval(), plain.eval()
    with torch.no_grad():
        f = net(x)
        torch.testing.assert_close(f[0], f[1])
        torch.testing.assert_close(f, (plain(x) + plain(x.flip(3))) / 2)
    net.train(), plain.train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(0)
    torch.testing.assert_close(a, plain(x))  # training sees single images


def test_unknown_model_options_are_errors():
    from uniframework.errors import UserError

    with pytest.raises(UserError, match="flip_tta"):
        build_backbone(ModelConfig(backbone="resnet9", timm_kwargs={"widths": [8, 8]}), 32)
