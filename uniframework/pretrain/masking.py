"""Mask generators for masked image modelling, and patchify / unpatchify.

Convention everywhere: mask value 1 (True) = the patch is masked (removed / predicted),
0 (False) = the patch is kept (visible).

- `random_masking`: MAE per-sample random masking by argsort of uniform noise (He et al. 2022).
- `simmim_mask`: SimMIM random masking of coarse *mask patches*, upsampled to the model patch
  grid (Xie et al. 2022; defaults: mask patch 32, ratio 0.6); `simmim_mask_patch_size` picks
  the mask patch for an image size.
- `blockwise_mask`: BEiT / iBOT block-wise masking (random rectangles of aspect ratio in
  [0.3, 1/0.3], at least `min_num_patches` each), used by iBOT.

Where we follow the papers and where we do not:
- SimMIM mask patch (paper: 32 px, its best in the ablation, official `MASK_PATCH_SIZE: 32`):
  ours is 32 px too wherever the image allows it, capped at a quarter of the image side so that
  every image has at least 4 x 4 mask patches. From 128 px up this *is* 32 px (192 / 224 px:
  32); below, it is image_size // 4 (32 px: 8, 16 px: 4), because a 32 px mask patch would
  mask the whole of a 32 px image, or 3 of the 4 blocks of a 64 px one (ratio 0.75, 4 masks).
  Where the geometry forbids that size (it must be a multiple of the model patch and divide the
  image) the largest size below it that fits is used. `mask_patch_size` sets any size.
- iBOT smallest block (official `loader.py`: `(min(H, W) // 3) ** 2`, 16 patches on the
  14 x 14 grid of 224 px / 16): ours is the same rule (at least 1): 4 on an 8 x 8 grid (32 px /
  4), 1 on a 4 x 4 grid (16 px / 4), i.e. a block side of about a third of the grid side or
  more, as in the paper (4 / 14). BEiT's `MaskingGenerator` default, a fixed 4, is
  `min_num_patches=4`. Unlike BEiT / iBOT, which stop short when 10 tries place nothing, we
  finish the exact count with smaller rectangles (down to 1 x 1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _count(ratio: float, total: int, how: str) -> int:
    # round(.., 9) first so that e.g. 0.7 * 10 = 7.000000000000001 does not ceil to 8
    x = round(ratio * total, 9)
    return math.ceil(x) if how == "ceil" else math.floor(x)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """Cut images into non-overlapping p x p patches (MAE's pixel order: row, column, channel).

    imgs: [N, C, H, W] with H and W multiples of p -> [N, L, p*p*C], L = (H/p)*(W/p).
    """
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    x: torch.Tensor, p: int, grid_size: int | Sequence[int] | None = None
) -> torch.Tensor:
    """Inverse of `patchify`.

    x: [N, L, p*p*C] -> [N, C, h*p, w*p]; grid_size = (h, w), default a square grid.
    """
    n, seq_len, dim = x.shape
    if grid_size is None:
        side = math.isqrt(seq_len)
        if side * side != seq_len:
            raise ValueError(f"{seq_len} patches are not a square grid: pass grid_size=(h, w)")
        grid_size = side
    h, w = _pair(grid_size)
    if h * w != seq_len or dim % (p * p):
        raise ValueError(f"cannot unpatchify [{n}, {seq_len}, {dim}] to a {h}x{w} grid of {p}px")
    c = dim // (p * p)
    x = x.reshape(n, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, c, h * p, w * p)


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample random masking: shuffle each sample by argsort of uniform noise, keep the
    first `int(L * (1 - mask_ratio))` tokens of the shuffle.

    x: [N, L, D] -> x_visible [N, L_keep, D], mask [N, L] (0 keep, 1 remove; dtype of x),
    ids_restore [N, L] (`gather(shuffled, 1, ids_restore)` puts tokens back in order).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n, seq_len, dim = x.shape
    len_keep = int(seq_len * (1 - mask_ratio))

    # without a generator, no `generator=` at all: torch.rand's generator overload fails under
    # torch.compile once the batch size is dynamic (benchmarks/official.py --compile at 224 px)
    if generator is None:
        noise = torch.rand(n, seq_len, device=x.device)
    else:
        noise = torch.rand(n, seq_len, generator=generator, device=generator.device).to(x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # small noise = keep, large = remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)

    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))

    mask = torch.ones(n, seq_len, device=x.device, dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # unshuffle: mask in original token order
    return x_visible, mask, ids_restore


def simmim_mask(
    batch: int,
    input_size: int | Sequence[int],
    mask_patch_size: int = 32,
    model_patch_size: int = 4,
    mask_ratio: float = 0.6,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SimMIM random masks: mask whole `mask_patch_size` squares, at the model's patch grid.

    Per sample, exactly ceil(mask_ratio * count) of the `count` coarse mask patches are masked
    (the official MaskGenerator uses np.ceil); each is then repeated to an (m/p) x (m/p) block of
    model patches. Paper defaults: mask patch 32 px at 192/224 input, ratio 0.6; for 32 px
    images use mask patch 8.

    Returns: [N, H/p, W/p] bool, True = masked, p = model_patch_size.
    """
    height, width = _pair(input_size)
    if mask_patch_size % model_patch_size:
        raise ValueError(
            f"mask_patch_size {mask_patch_size} must be a multiple of the model patch size "
            f"{model_patch_size}"
        )
    if height % mask_patch_size or width % mask_patch_size:
        raise ValueError(
            f"input size {height}x{width} must be a multiple of mask_patch_size {mask_patch_size}"
        )
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    gh, gw = height // mask_patch_size, width // mask_patch_size
    scale = mask_patch_size // model_patch_size
    count = gh * gw
    num_masked = _count(mask_ratio, count, "ceil")

    noise = torch.rand(batch, count, generator=generator)
    ids = torch.argsort(noise, dim=1)[:, :num_masked]
    mask = torch.zeros(batch, count, dtype=torch.bool).scatter_(1, ids, True)
    mask = mask.reshape(batch, gh, gw)
    return mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def simmim_mask_patch_size(image_size: int, model_patch_size: int, paper: int = 32) -> int:
    """SimMIM's default mask patch (px) for a square image: `paper` (32), capped at a quarter
    of the side (at least 4 x 4 mask patches), rounded down to a multiple of the model patch
    that divides the image; the model patch itself when nothing larger fits.

    224 or 192 px -> 32, 128 px -> 32, 64 px -> 16, 32 px -> 8, 16 px (patch 4) -> 4.
    """
    target = min(paper, image_size // 4)
    fits = [m for m in range(model_patch_size, target + 1, model_patch_size) if image_size % m == 0]
    return max(fits, default=model_patch_size)


def min_block_patches(grid_size: int | Sequence[int]) -> int:
    """iBOT's smallest masked block on an h x w patch grid: (min(h, w) // 3) ** 2, at least 1
    (official `ImageFolderMask`): 16 on 14 x 14, 4 on 8 x 8, 1 on 4 x 4."""
    h, w = _pair(grid_size)
    return max(1, (min(h, w) // 3) ** 2)


def _place_block(
    mask: torch.Tensor,
    max_new: int,
    min_area: float,
    log_aspect: tuple[float, float],
    rng: random.Random,
    attempts: int = 10,
) -> int:
    """Try to mask one random rectangle adding 1..max_new new patches (BEiT's `_mask`).

    mask: [h, w] bool, changed in place. Returns the number of newly masked patches (0 = failed).
    """
    h, w = mask.shape
    for _ in range(attempts):
        area = rng.uniform(min_area, max_new)
        aspect = math.exp(rng.uniform(*log_aspect))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if 0 < bh < h and 0 < bw < w:
            top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
            new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
            if 0 < new <= max_new:
                mask[top : top + bh, left : left + bw] = True
                return new
    return 0


def _blockwise_one(
    h: int,
    w: int,
    count: int,
    min_num_patches: int,
    log_aspect: tuple[float, float],
    rng: random.Random,
) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    done = 0
    while done < count:
        left = count - done
        delta = _place_block(mask, left, min_num_patches, log_aspect, rng)
        if delta == 0:  # BEiT gives up here; smaller rectangles finish the exact count
            delta = _place_block(mask, left, 1, log_aspect, rng)
        if delta == 0:  # nearly full grid: a 1x1 rectangle on a free patch always fits
            free = (~mask).flatten().nonzero().flatten().tolist()
            mask.view(-1)[rng.choice(free)] = True
            delta = 1
        done += delta
    return mask


def blockwise_mask(
    batch: int,
    grid_size: int | Sequence[int],
    mask_ratio: float | Sequence[float],
    min_num_patches: int | None = None,
    aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT / iBOT block-wise masks on an h x w patch grid.

    Random rectangles (area >= `min_num_patches`, aspect ratio log-uniform in `aspect_ratio`)
    are masked until exactly int(mask_ratio * h * w) patches are masked; where BEiT would stop
    short, smaller rectangles (down to 1x1) finish the count. `mask_ratio` may be one value or
    one per sample (iBOT draws it per image from U(0.1, 0.5), 0 = unmasked image).
    min_num_patches: None = iBOT's `min_block_patches(grid_size)` (16 on 14 x 14).

    Returns: [N, h, w] bool, True = masked.
    """
    h, w = _pair(grid_size)
    if min_num_patches is None:
        min_num_patches = min_block_patches((h, w))
    if min_num_patches < 1:
        raise ValueError(f"min_num_patches must be >= 1, got {min_num_patches}")
    ratios = [float(mask_ratio)] * batch if isinstance(mask_ratio, int | float) else mask_ratio
    ratios = [float(r) for r in ratios]
    if len(ratios) != batch:
        raise ValueError(f"got {len(ratios)} mask ratios for a batch of {batch}")
    if any(not 0.0 <= r <= 1.0 for r in ratios):
        raise ValueError(f"mask ratios must be in [0, 1], got {ratios}")
    lo, hi = aspect_ratio
    if not 0 < lo <= hi:
        raise ValueError(f"aspect_ratio must be (min, max) with 0 < min <= max, got {aspect_ratio}")
    # one Python RNG seeded from the torch generator: reproducible and fast for the small loop
    rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
    log_aspect = (math.log(lo), math.log(hi))
    masks = [
        _blockwise_one(h, w, _count(r, h * w, "floor"), min_num_patches, log_aspect, rng)
        for r in ratios
    ]
    return torch.stack(masks)
