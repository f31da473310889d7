"""SimMIM (uniframework.pretrain.simmim): mask token placement, masked-only L1 loss, ViT and Swin
encoders, timm export, and a short training run."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from timm.models.vision_transformer import VisionTransformer

from uniframework.pretrain.simmim import (
    SimMIM,
    SimMIMSwin,
    SimMIMViT,
    simmim_swin_tiny_32,
    simmim_vit_tiny_patch4,
)


def tiny_vit(img_size: int = 16) -> SimMIM:
    torch.manual_seed(0)
    enc = SimMIMViT(img_size=img_size, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    return SimMIM(enc, encoder_stride=4, mask_patch_size=8)


def tiny_swin(img_size: int = 32) -> SimMIM:
    torch.manual_seed(0)
    enc = SimMIMSwin(
        img_size=img_size, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1),
        num_heads=(1, 2), drop_path_rate=0.0,
    )  # fmt: skip
    return SimMIM(enc, encoder_stride=enc.encoder_stride, mask_patch_size=8)


def digits(n: int = 32, size: int = 32) -> torch.Tensor:
    """sklearn digits, 8 px -> `size` px, 3 channels, in [-1, 1]: [n, 3, size, size]."""
    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.repeat(1, 3, 1, 1) - 0.5) / 0.5


def test_vit_mask_token_replaces_patch_embedding_before_pos_embed():
    model = tiny_vit()
    enc = model.encoder
    imgs = torch.randn(2, 3, 16, 16)
    mask = model.random_mask(2, torch.Generator().manual_seed(0))  # [2, 4, 4]
    seen = {}
    enc.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    model(imgs, mask)
    tokens = seen["x"][:, 1:]  # [2, 16, 32], class token dropped
    pos = enc.pos_embed[0, 1:].detach()
    m = mask.flatten(1)
    patches = enc.patch_embed(imgs).detach()
    assert torch.allclose(tokens[m], (enc.mask_token[0, 0].detach() + pos).expand(2, -1, -1)[m])
    assert torch.allclose(tokens[~m], (patches + pos)[~m])


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_masked_pixels_do_not_reach_the_encoder(build):
    model = build()
    size = model.img_size[0]
    imgs = torch.randn(2, 3, size, size)
    mask = model.random_mask(2, torch.Generator().manual_seed(1))
    p = model.patch_size
    pix = mask.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].expand_as(imgs)
    changed = imgs.clone()
    changed[pix] = torch.randn(int(pix.sum()))
    changed_visible = imgs.clone()
    changed_visible[~pix] += 1.0
    with torch.no_grad():
        feats = model.encoder(imgs, mask)
        assert torch.allclose(model.encoder(changed, mask), feats, atol=1e-5)
        assert not torch.allclose(model.encoder(changed_visible, mask), feats, atol=1e-3)


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_shapes_and_stride(build):
    model = build()
    size = model.img_size[0]
    imgs = torch.randn(2, 3, size, size)
    loss, x_rec = model(imgs)
    assert loss.ndim == 0 and x_rec.shape == imgs.shape
    feats = model.encoder(imgs, model.random_mask(2))
    assert feats.shape[-1] * model.encoder_stride == size


def test_loss_on_masked_pixels_only_and_hand_value():
    model = tiny_vit()
    imgs = torch.randn(2, 3, 16, 16)
    mask = model.random_mask(2, torch.Generator().manual_seed(2))
    x_rec = torch.randn(2, 3, 16, 16)
    pix = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(imgs)
    ref = (x_rec - imgs).abs()[pix].mean()  # mean over masked pixels and channels
    base = model.forward_loss(imgs, x_rec, mask)
    assert torch.allclose(base, ref, rtol=1e-4)
    vis = (~pix).nonzero()[0].tolist()
    hid = pix.nonzero()[0].tolist()
    for idx, same in ((vis, True), (hid, False)):
        x2 = x_rec.clone()
        x2[tuple(idx)] += 5.0
        assert torch.allclose(model.forward_loss(imgs, x2, mask), base) == same


def test_swin_factory_runs_at_32px():
    model = simmim_swin_tiny_32()
    assert model.encoder_stride == 4 and model.patch_size == 2
    mask = model.random_mask(2)
    assert mask.shape == (2, 16, 16) and torch.all(mask.sum((1, 2)) == 10 * 16)  # 10 of 16
    loss, x_rec = model(torch.randn(2, 3, 32, 32), mask)
    assert torch.isfinite(loss) and x_rec.shape == (2, 3, 32, 32)


def test_vit_factory_defaults():
    model = simmim_vit_tiny_patch4()
    assert (model.encoder_stride, model.patch_size, model.mask_patch_size) == (4, 4, 8)
    assert model.mask_ratio == 0.6


def test_wrong_stride_is_a_clear_error():
    enc = SimMIMViT(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=1)
    with pytest.raises(ValueError, match="encoder_stride"):
        SimMIM(enc, encoder_stride=8, mask_patch_size=8)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of mask_patch_size"):
        SimMIM(enc, encoder_stride=4, mask_patch_size=32)


def test_vit_encoder_weights_load_into_timm():
    model = tiny_vit()
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                            num_classes=0)  # fmt: skip
    missing, unexpected = vit.load_state_dict(model.encoder_state_dict(), strict=False)
    assert missing == [] and unexpected == []
    assert "mask_token" in model.encoder.state_dict()


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_ten_steps_lower_the_loss(build):
    model = build(32)
    imgs = digits(32)
    mask = model.random_mask(32, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05)
    with torch.no_grad():
        before = float(model(imgs, mask)[0])
    for step in range(10):
        step_mask = model.random_mask(32, torch.Generator().manual_seed(100 + step))
        loss = model(imgs, step_mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(model(imgs, mask)[0]) < 0.9 * before
