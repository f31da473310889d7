import pytest
import torch

from uniframework.config import ModelConfig
from uniframework.errors import UserError
from uniframework.io import save_weights
from uniframework.models import build_backbone, build_classifier
from uniframework.registry import BACKBONES


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_registered_backbone_gives_features_at_small_size(name):
    size = 16
    model = build_backbone(ModelConfig(backbone=name, patch_size=4), size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, model.num_features)


def test_vit_any_image_and_patch_size():
    model = build_backbone(ModelConfig(backbone="vit_tiny", patch_size=2), 12)
    assert model.patch_embed.num_patches == 36 and model.num_features == 192
    with pytest.raises(UserError, match="does not divide"):
        build_backbone(ModelConfig(backbone="vit_tiny", patch_size=5), 12)


def test_small_input_stem_keeps_resolution():
    small = build_backbone(ModelConfig(backbone="resnet18", small_input=True), 32)
    big = build_backbone(ModelConfig(backbone="resnet18", small_input=False), 32)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert big.conv1.stride == (2, 2)


def test_any_timm_model_by_name_and_unknown_names():
    model = build_backbone(ModelConfig(backbone="test_vit", timm_kwargs={"img_size": 16}), 16)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, model.num_features)
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        build_backbone(ModelConfig(backbone="resnet81"), 32)


def test_classifier_interface_and_weights(tmp_path):
    cfg = ModelConfig(backbone="resnet_tiny")
    clf = build_classifier(cfg, 16, num_classes=4)
    x = torch.randn(3, 3, 16, 16)
    f = clf.forward_features(x)
    assert f.shape == (3, clf.feature_dim) and clf(x).shape == (3, 4)
    save_weights(tmp_path / "w.safetensors", clf.state_dict(), {"backbone": "resnet_tiny"})
    again = build_classifier(
        cfg.model_copy(update={"weights": str(tmp_path / "w.safetensors")}), 16, 7
    )
    assert torch.equal(again.backbone.conv1.weight, clf.backbone.conv1.weight)
    other = ModelConfig(backbone="resnet18", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match="does not fit this model"):
        build_classifier(other, 16, 4)
