"""MAE (uniframework.pretrain.mae): visible-only encoder, masked-only loss, norm-pix target,
timm export, reconstruction, and a short training run."""

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from timm.models.vision_transformer import VisionTransformer

from uniframework.pretrain.mae import MaskedAutoencoderViT, mae_vit_tiny_patch4
from uniframework.pretrain.pos_embed import sincos_2d


def tiny_mae(**kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    cfg = dict(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
    )  # fmt: skip
    return MaskedAutoencoderViT(**{**cfg, **kw})


def digits(n: int = 32, size: int = 32) -> torch.Tensor:
    """sklearn digits, 8 px -> `size` px, 3 channels, in [-1, 1]: [n, 3, size, size]."""
    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.repeat(1, 3, 1, 1) - 0.5) / 0.5


def test_shapes_and_mask_count():
    model = tiny_mae()
    loss, pred, mask = model(torch.randn(3, 3, 16, 16))
    assert loss.ndim == 0 and pred.shape == (3, 16, 48) and mask.shape == (3, 16)
    assert torch.all(mask.sum(1) == 16 - int(16 * 0.25))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.0])
def test_encoder_sees_only_visible_tokens(ratio):
    model = tiny_mae()
    seen: dict[str, int] = {}

    def hook(name):
        def record(module, args) -> None:
            seen[name] = args[0].shape[1]  # [N, tokens, D]

        return record

    model.blocks[0].register_forward_pre_hook(hook("enc"))
    model.decoder_blocks[0].register_forward_pre_hook(hook("dec"))
    model(torch.randn(2, 3, 16, 16), mask_ratio=ratio)
    assert seen["enc"] == 1 + int(16 * (1 - ratio))  # class token + visible patches
    assert seen["dec"] == 1 + 16  # decoder: all positions


def test_decoder_input_is_unshuffled_with_mask_tokens_and_pos_embed():
    model = tiny_mae()
    seen = {}
    model.decoder_blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    imgs = torch.randn(2, 3, 16, 16)
    latent, mask, ids_restore = model.forward_encoder(imgs)
    model.forward_decoder(latent, ids_restore)
    x = seen["x"][:, 1:]  # [2, 16, 16] without the class token
    pos = model.decoder_pos_embed[0, 1:]
    hidden = mask.bool()
    mask_rows = (model.mask_token[0, 0] + pos).expand(2, -1, -1)
    assert torch.allclose(x[hidden], mask_rows[hidden].detach())
    # visible positions hold the projected latent of the same patch, in original order
    visible = model.decoder_embed(latent[:, 1:]).detach()  # [2, L_keep, 16], shuffled order
    order = torch.argsort(ids_restore, 1)[:, : visible.shape[1]]  # original index of each
    for n in range(2):
        assert torch.allclose(x[n, order[n]], visible[n] + pos[order[n]], atol=1e-6)


def test_all_tokens_path_keeps_order():
    model = tiny_mae()
    latent, mask, ids_restore = model.forward_encoder(torch.randn(2, 3, 16, 16), mask_ratio=0.0)
    assert latent.shape == (2, 17, 32) and mask.sum() == 0
    assert torch.equal(ids_restore, torch.arange(16).expand(2, -1))


def test_loss_sees_masked_patches_only():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 16, 16)
    loss, pred, mask = model(imgs)
    vis = (mask[0] == 0).nonzero()[0, 0]
    hid = (mask[0] == 1).nonzero()[0, 0]
    pred_v, pred_h = pred.detach().clone(), pred.detach().clone()
    pred_v[0, vis] += 10.0
    pred_h[0, hid] += 10.0
    base = model.forward_loss(imgs, pred.detach(), mask)
    assert torch.allclose(model.forward_loss(imgs, pred_v, mask), base)
    assert not torch.allclose(model.forward_loss(imgs, pred_h, mask), base)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_against_hand_computation(norm_pix):
    model = tiny_mae(norm_pix_loss=norm_pix)
    imgs = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pred = torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[0, [1, 5]] = 1
    mask[1, [0, 2, 15]] = 1
    total, count = 0.0, 0
    for n in range(2):
        for i in range(16):
            if mask[n, i] == 0:
                continue
            r, c = divmod(i, 4)  # 4x4 grid, row-major
            patch = imgs[n, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].permute(1, 2, 0).flatten()
            if norm_pix:  # each patch by its own mean / unbiased var, eps 1e-6
                mean = patch.sum() / 48
                var = ((patch - mean) ** 2).sum() / 47
                patch = (patch - mean) / math.sqrt(var + 1e-6)
            total += float(((pred[n, i] - patch) ** 2).mean())
            count += 1
    got = model.forward_loss(imgs, pred, mask)
    assert torch.allclose(got, torch.tensor(total / count), rtol=1e-5)


def test_fixed_sincos_pos_embed():
    model = tiny_mae()
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_2d(32, 4, cls_token=True))
    emb = sincos_2d(8, (2, 3), cls_token=True)
    assert emb.shape == (7, 8) and torch.all(emb[0] == 0)
    r, c = 1, 2  # token 1 + 1*3 + 2; first half encodes the column, omega = (1, 1/100)
    omega = torch.tensor([1.0, 0.01])
    ref = torch.cat([(c * omega).sin(), (c * omega).cos(), (r * omega).sin(), (r * omega).cos()])
    assert torch.allclose(emb[1 + 3 * r + c], ref)


def test_encoder_weights_load_into_timm_vit():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 16, 16)
    vit = VisionTransformer(**model.encoder_config(), num_classes=10)
    missing, unexpected = vit.load_state_dict(model.encoder_state_dict(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []
    model.eval()
    vit.eval()
    with torch.no_grad():
        ours = model.forward_encoder(imgs, mask_ratio=0.0)[0]
        assert torch.allclose(vit.forward_features(imgs), ours, atol=1e-5)


def test_reconstruct_pastes_visible_and_denormalises():
    model = tiny_mae()
    imgs = torch.randn(2, 3, 16, 16)
    _, pred, mask = model(imgs)
    # a perfect norm-pix prediction de-normalises back to the image
    assert torch.allclose(model.reconstruct(imgs, model.target(imgs), mask), imgs, atol=1e-4)
    # visible patches are the input, whatever the prediction
    rec = model.reconstruct(imgs, pred.detach(), mask)
    keep = (1 - mask).reshape(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 4, 4, 4).reshape(2, 3, 16, 16)
    assert torch.equal(rec[keep.bool()], imgs[keep.bool()])
    assert not torch.allclose(rec, imgs)


def test_factory_defaults():
    model = mae_vit_tiny_patch4()
    assert model.mask_ratio == 0.75 and model.norm_pix_loss
    assert (len(model.blocks), model.decoder_embed.out_features, len(model.decoder_blocks)) == (
        12, 128, 2,
    )  # fmt: skip


def test_ten_steps_lower_the_loss():
    model = tiny_mae(img_size=32)
    imgs = digits(32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)

    def eval_loss() -> float:
        torch.manual_seed(123)  # same masks before and after
        with torch.no_grad():
            return float(model(imgs)[0])

    before = eval_loss()
    for _ in range(10):
        loss = model(imgs)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.9 * before
