"""Property tests for the mask generators and patchify (uniframework.pretrain.masking)."""

import math
import random

import pytest
import torch
from scipy import ndimage

from uniframework.pretrain import masking
from uniframework.pretrain.masking import (
    _place_block,
    blockwise_mask,
    min_block_patches,
    patchify,
    random_masking,
    simmim_mask,
    simmim_mask_patch_size,
    unpatchify,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- patchify


def test_patchify_order_and_roundtrip():
    imgs = torch.randn(2, 3, 8, 12, generator=_gen())
    x = patchify(imgs, 4)
    assert x.shape == (2, 6, 48)
    # patch 4 = row 1, column 1 of a 2x3 grid; pixels in (row, column, channel) order
    expected = imgs[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(2, 48)
    assert torch.equal(x[:, 4], expected)
    assert torch.equal(unpatchify(x, 4, (2, 3)), imgs)


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.zeros(1, 6, 48), 4)


# ---------------------------------------------------------------- MAE random masking


@pytest.mark.parametrize(("seq_len", "ratio"), [(64, 0.75), (49, 0.75), (196, 0.5), (10, 0.9)])
def test_random_masking_exact_count(seq_len, ratio):
    x = torch.randn(8, seq_len, 5, generator=_gen())
    x_vis, mask, ids_restore = random_masking(x, ratio, _gen(1))
    keep = int(seq_len * (1 - ratio))
    assert x_vis.shape == (8, keep, 5)
    assert mask.shape == ids_restore.shape == (8, seq_len)
    assert torch.all(mask.sum(1) == seq_len - keep)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_random_masking_differs_per_sample_and_is_seeded():
    x = torch.randn(16, 64, 4)
    _, mask, _ = random_masking(x, 0.75, _gen(3))
    assert len({tuple(m.tolist()) for m in mask}) == 16
    _, mask2, _ = random_masking(x, 0.75, _gen(3))
    assert torch.equal(mask, mask2)


def test_ids_restore_inverts_the_shuffle():
    n, seq_len, dim = 4, 20, 3
    x = torch.randn(n, seq_len, dim, generator=_gen())
    x_vis, mask, ids_restore = random_masking(x, 0.6, _gen(2))
    # the MAE decoder's step: append placeholders for removed tokens, gather with ids_restore
    filler = torch.full((n, seq_len - x_vis.shape[1], dim), float("nan"))
    x_full = torch.gather(
        torch.cat([x_vis, filler], 1), 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim)
    )
    visible = mask == 0
    assert torch.equal(x_full[visible], x[visible])  # visible tokens back in place
    assert torch.isnan(x_full[~visible]).all()  # removed positions are exactly the mask
    ids_shuffle = torch.argsort(ids_restore, 1)
    assert torch.equal(
        torch.gather(ids_shuffle, 1, ids_restore), torch.arange(seq_len).expand(n, -1)
    )


def test_random_masking_rejects_bad_ratio():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.zeros(1, 4, 2), 1.0)


# ---------------------------------------------------------------- SimMIM masks


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.6, 0.7])
@pytest.mark.parametrize(("size", "mask_patch", "patch"), [(32, 8, 4), (32, 8, 2), (224, 32, 16)])
def test_simmim_mask_ratio_exact_and_blocks(ratio, size, mask_patch, patch):
    mask = simmim_mask(6, size, mask_patch, patch, ratio, _gen())
    side, coarse, scale = size // patch, size // mask_patch, mask_patch // patch
    assert mask.shape == (6, side, side) and mask.dtype == torch.bool
    # each mask patch is an (m/p) x (m/p) block of identical values
    blocks = mask.reshape(6, coarse, scale, coarse, scale)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    # exactly ceil(ratio * count) mask patches (official MaskGenerator: np.ceil)
    assert torch.all(blocks[:, :, 0, :, 0].sum((1, 2)) == math.ceil(round(ratio * coarse**2, 9)))


def test_simmim_mask_differs_per_sample():
    mask = simmim_mask(16, 32, 8, 4, 0.6, _gen())
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 8


def test_simmim_mask_errors():
    with pytest.raises(ValueError, match="multiple of the model patch"):
        simmim_mask(1, 32, 8, 3)
    with pytest.raises(ValueError, match="multiple of mask_patch_size"):
        simmim_mask(1, 36, 8, 4)
    with pytest.raises(ValueError, match="mask_ratio"):
        simmim_mask(1, 32, 8, 4, 1.5)


# ---------------------------------------------------------------- block-wise (BEiT / iBOT)


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Number of masked/unmasked 4-neighbour pairs per mask: [N, h, w] -> [N]."""
    m = mask.int()
    return (m[:, 1:] != m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] != m[:, :, :-1]).sum((1, 2))


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.4, 0.5])
def test_blockwise_hits_target_count(ratio):
    mask = blockwise_mask(32, 14, ratio, generator=_gen())
    assert mask.shape == (32, 14, 14)
    assert torch.all(mask.sum((1, 2)) == int(ratio * 196))


def test_blockwise_per_sample_ratios():
    ratios = [0.0, 0.1, 0.5, 0.25]
    mask = blockwise_mask(4, (8, 12), ratios, generator=_gen())
    assert mask.sum((1, 2)).tolist() == [int(r * 96) for r in ratios]


def test_blockwise_is_blocky():
    """Block masks have far shorter borders than random masks with the same count."""
    block = blockwise_mask(64, 14, 0.4, generator=_gen())
    rand = simmim_mask(64, 14, 1, 1, 78 / 196, _gen())
    assert block.sum() == rand.sum()
    assert _boundary(block).float().mean() < 0.5 * _boundary(rand).float().mean()
    # blocks of >= min_num_patches: isolated masked patches are rare (1x1 only in the tail)
    m = block.int()
    neighbours = torch.zeros_like(m)
    neighbours[:, 1:] += m[:, :-1]
    neighbours[:, :-1] += m[:, 1:]
    neighbours[:, :, 1:] += m[:, :, :-1]
    neighbours[:, :, :-1] += m[:, :, 1:]
    assert ((m == 1) & (neighbours == 0)).sum() < 0.3 * len(block)


def test_one_block_is_a_filled_rectangle():
    rng = random.Random(0)
    for _ in range(50):
        mask = torch.zeros(14, 14, dtype=torch.bool)
        new = _place_block(mask, 40, 4, (math.log(0.3), math.log(1 / 0.3)), rng)
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert new == int(mask.sum()) == box.numel() and box.all()
        assert 1 <= new <= 40


def test_blockwise_errors():
    with pytest.raises(ValueError, match="mask ratios"):
        blockwise_mask(2, 8, [0.1])
    with pytest.raises(ValueError, match="mask ratios must be in"):
        blockwise_mask(1, 8, 1.2)


# ---------------------------------------------------------------- paper defaults


@pytest.mark.parametrize(
    ("size", "patch", "want"),
    [
        (224, 16, 32),  # the paper's 32 px (ViT-B/16 at 224 px)
        (192, 4, 32),  # the paper's 32 px (Swin-B at 192 px)
        (192, 16, 32),
        (128, 16, 32),  # from 128 px up the quarter-side cap no longer bites
        (64, 4, 16),  # below: a quarter of the side, at least 4 x 4 mask patches
        (32, 4, 8),  # CIFAR
        (16, 4, 4),  # digits: the model patch
        (224, 14, 28),  # 32 is no multiple of 14: the largest multiple of 14 below it
    ],
)
def test_simmim_mask_patch_is_32px_where_the_image_allows_it(size, patch, want):
    got = simmim_mask_patch_size(size, patch)
    assert got == want
    assert got % patch == 0 and size % got == 0  # always a valid simmim_mask geometry
    simmim_mask(1, size, got, patch, 0.6, _gen())


@pytest.mark.parametrize(("grid", "want"), [(14, 16), ((14, 20), 16), (8, 4), (4, 1), (2, 1)])
def test_min_block_patches_is_the_official_third_of_the_short_side_squared(grid, want):
    assert min_block_patches(grid) == want  # official: (min(H, W) // 3) ** 2, at least 1


def _first_min_areas(monkeypatch, *args, **kwargs) -> list[float]:
    """The `min_area` of the first block tried in each mask of blockwise_mask(*args)."""
    calls, place = [], masking._place_block

    def record(mask, max_new, min_area, *rest):
        calls.append((int(mask.sum()), min_area))
        return place(mask, max_new, min_area, *rest)

    monkeypatch.setattr(masking, "_place_block", record)
    blockwise_mask(*args, **kwargs)
    return [area for done, area in calls if done == 0]


def test_blockwise_default_minimum_is_16_patches_on_14x14(monkeypatch):
    assert set(_first_min_areas(monkeypatch, 8, 14, 0.4, generator=_gen())) == {16}
    assert set(_first_min_areas(monkeypatch, 8, 8, 0.4, generator=_gen())) == {4}
    explicit = _first_min_areas(monkeypatch, 8, 14, 0.4, min_num_patches=4, generator=_gen())
    assert set(explicit) == {4}  # BEiT's fixed 4 stays available
    with pytest.raises(ValueError, match="min_num_patches"):
        blockwise_mask(1, 14, 0.4, min_num_patches=0)


def _largest_block(mask: torch.Tensor) -> int:
    labels, n = ndimage.label(mask.numpy())  # 4-connected components
    return int(max(ndimage.sum_labels(mask.numpy(), labels, range(1, n + 1)), default=0))


def test_blockwise_default_masks_20_patches_of_14x14_mostly_in_one_block_of_16_or_more():
    # 20 masked patches: a first block of >= 16 leaves <= 4 for the rest; with BEiT's 4 the
    # first block is U(4, 20) and the 20 are split (measured: 87% vs 44% of 200 masks)
    ratio = 20 / 196

    def share(**kw) -> float:
        masks = blockwise_mask(200, 14, ratio, generator=_gen(), **kw)
        assert (masks.sum((1, 2)) == 20).all()
        return sum(_largest_block(m) >= 16 for m in masks) / len(masks)

    assert share() > 0.75
    assert share(min_num_patches=4) < 0.6
