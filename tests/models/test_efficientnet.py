"""EfficientNet V1/V2 on timm's classes: scaling helpers, presets, any φ, the backbone interface."""

import math

import pytest
import torch
from timm.layers import DropPath

from uniframework.config import ModelConfig, load_config
from uniframework.errors import UserError
from uniframework.models import build_backbone
from uniframework.models.efficientnet import (
    PRESETS,
    block_strings,
    compound_scaling,
    efficientnet,
    efficientnet_preset,
    round_filters,
    round_repeats,
)

# Exact counts of the reference implementation (TF checkpoints, identical in timm), 1000 classes,
# and the paper's figures (V1 Table 2, V2 Table 7), which are these rounded to 2 digits.
REFERENCE = {
    "b0": (5_288_548, 5.3),
    "b1": (7_794_184, 7.8),
    "b2": (9_109_994, 9.2),
    "b3": (12_233_232, 12),
    "b4": (19_341_616, 19),
    "b5": (30_389_784, 30),
    "b6": (43_040_704, 43),
    "b7": (66_347_960, 66),
    "v2_s": (21_458_488, 22),
    "v2_m": (54_139_356, 54),
    "v2_l": (118_515_272, 120),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_round_filters_by_hand():
    assert round_filters(32, 1.0) == 32
    assert round_filters(32, 1.1) == 32  # 35.2 -> nearest multiple of 8
    assert round_filters(16, 1.4) == 24  # 22.4 -> 24
    assert round_filters(1280, 1.8) == 2304  # 2304 exactly
    assert round_filters(40, 1.8) == 72
    assert round_filters(17, 0.7) == 16  # 11.9 -> 8 would lose 33% > 10%, so one step up
    assert round_filters(4, 1.0) == 8  # never below the divisor


def test_round_repeats_rounds_up():
    assert [round_repeats(r, 1.1) for r in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert round_repeats(4, 1.0) == 4 and round_repeats(1, 3.1) == 4
    assert round_repeats(3, 1.2**0.5) == 4  # 3.29 -> 4


def test_compound_scaling_follows_the_paper():
    s = compound_scaling(0)
    assert (s.width, s.depth, s.resolution, s.dropout) == (1.0, 1.0, 224, 0.2)
    s = compound_scaling(2.5)
    assert math.isclose(s.depth, 1.2**2.5) and math.isclose(s.width, 1.1**2.5)
    assert s.resolution == round(224 * 1.15**2.5) == 318
    assert compound_scaling(1).dropout < s.dropout <= 0.5 and compound_scaling(9).dropout == 0.5
    assert abs(1.2 * 1.1**2 * 1.15**2 - 2) < 0.1  # FLOPs ≈ 2^φ


@pytest.mark.parametrize("phi", [-1, float("nan"), "two"])
def test_bad_phi_names_the_key(phi):
    with pytest.raises(UserError, match=r"model\.timm_kwargs\.phi"):
        efficientnet(phi)


def test_unknown_preset_and_bad_coefficients():
    with pytest.raises(UserError, match="unknown EfficientNet preset 'b9'.*b7"):
        efficientnet_preset("b9")
    with pytest.raises(UserError, match=r"model\.timm_kwargs\.phi"):
        build_backbone(ModelConfig(backbone="efficientnet_phi", timm_kwargs={"phi": -0.5}), 32)
    with pytest.raises(UserError, match="fix model.timm_kwargs"):
        build_backbone(ModelConfig(backbone="efficientnet_b0", timm_kwargs={"bogus": 1}), 32)
    with pytest.raises(UserError, match="model.timm_kwargs.beta"):
        efficientnet(1.0, beta=0.5)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_preset_parameter_counts(name):
    exact, paper = REFERENCE[name]
    with torch.device("meta"):  # count without allocating or initialising weights
        n = n_params(efficientnet_preset(name, num_classes=1000))
    assert n == exact  # the reference implementation's count, parameter for parameter
    # the paper prints 2 digits: within 1% except where that rounding alone is larger
    # (B3 12.23 -> "12", B4 19.34 -> "19", B5 30.39 -> "30", V2-S 21.46 -> "22")
    tol = {"b3": 0.02, "b4": 0.02, "b5": 0.015, "v2_s": 0.03, "v2_l": 0.015}.get(name, 0.01)
    assert abs(n / 1e6 - paper) / paper < tol


def test_presets_use_the_published_table():
    assert [(s.width, s.depth, s.resolution, s.dropout) for s in PRESETS.values()] == [
        (1.0, 1.0, 224, 0.2),
        (1.0, 1.1, 240, 0.2),
        (1.1, 1.2, 260, 0.3),
        (1.2, 1.4, 300, 0.3),
        (1.4, 1.8, 380, 0.4),
        (1.6, 2.2, 456, 0.4),
        (1.8, 2.6, 528, 0.5),
        (2.0, 3.1, 600, 0.5),
    ]
    with torch.device("meta"):
        b7 = efficientnet_preset("b7", num_classes=0, small_input=False)
    assert len(b7.blocks) == 7 and sum(len(s) for s in b7.blocks) == 55  # 16 repeats -> 55
    assert b7.conv_stem.out_channels == 64 and b7.num_features == 2560


def test_v2_has_fused_mbconv_in_early_stages():
    from timm.models._efficientnet_blocks import EdgeResidual, InvertedResidual

    with torch.device("meta"):
        model = efficientnet_preset("v2_s")
    kinds = [type(stage[0]) for stage in model.blocks]
    assert kinds[1:3] == [EdgeResidual, EdgeResidual]  # Fused-MBConv
    assert kinds[3:] == [InvertedResidual] * 3  # MBConv with SE


@pytest.mark.parametrize("phi", [0.5, 2.5])
def test_any_phi_builds_and_runs(phi):
    model = efficientnet(phi, num_classes=3, small_input=True).eval()
    assert model.scaling.resolution == round(224 * 1.15**phi)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 3)
    with torch.device("meta"):  # one more φ: more of every dimension
        a, b = efficientnet(phi), efficientnet(phi + 1)
    assert n_params(a) < n_params(b) and a.num_features < b.num_features
    assert sum(map(len, a.blocks)) < sum(map(len, b.blocks))


def test_small_input_variant_keeps_32px_at_4x4():
    small = efficientnet_preset("b0", small_input=True).eval()
    full = efficientnet_preset("b0", small_input=False).eval()
    assert n_params(small) == n_params(full)  # strides only
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert small.forward_features(x).shape[-2:] == (4, 4)
        assert full.forward_features(x).shape[-2:] == (1, 1)
    assert block_strings([("ir", 2, 3, 2, 6, 24, 0.25)] * 2, 1.0, True) == [
        ["ir_r2_k3_s1_e6_c24_se0.25"],
        ["ir_r2_k3_s2_e6_c24_se0.25"],
    ]


def test_registered_backbones_and_config_overrides():
    cfg = load_config(None, ["model.backbone=efficientnet_phi", "model.timm_kwargs={phi: 0.5}"])
    model = build_backbone(cfg.model, 16)
    assert model.drop_rate == pytest.approx(0.225)  # the paper's, since the config sets none
    with torch.no_grad():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, model.num_features)
    cfg = load_config(None, ["model.backbone=efficientnet_b0", "model.drop_rate=0"])
    model = build_backbone(cfg.model, 32)
    assert model.drop_rate == 0.0 and model.num_features == 1280
    assert model.conv_stem.stride == (1, 1)  # small_input defaults to true, as for ResNet
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 15 and 0.18 < max(rates) < 0.2  # timm: linear in block index to 0.2
