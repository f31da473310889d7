"""Augmentation of whole batches: one tensor operation per batch instead of one transform per image.

At 32 px the per-image path (a `View`'s torchvision v2 pipeline, called once per image by the
DataLoader) costs more than a small CNN's training step on a CPU. Here the images of a view are
decoded, resized and centre-cropped once (`BatchView`, uint8 in memory); each batch is gathered,
normalised and augmented as one float tensor [N, 3, S, S]:

- horizontal flip: each image with probability 1/2 (where the dataset allows flips);
- translation: reflect-pad by `pad` pixels, then a random S x S crop per image — the same
  distribution as `v2.RandomCrop(S, padding=pad, padding_mode="reflect")`;
- cutout (DeVries & Taylor, 2017): one `cutout` x `cutout` square per image, centred anywhere in
  the image (so it may be partly outside), set to 0 = the dataset mean after normalisation;
- colour (`batch_colour`, the contrastive views' strong augmentation, SimCLR's): with
  probability 0.8 brightness, contrast and saturation each scaled by a factor drawn from
  [1 - s, 1 + s], then grayscale with probability 0.2, on the de-normalised image in [0, 1].

Every operation draws from torch's global generator (seeded by the run), or from `generator`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_flip(
    x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image of x [N, C, H, W] left-right with probability p."""
    flip = torch.rand(len(x), generator=generator) < p
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def batch_translate(
    x: torch.Tensor, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reflect-pad x [N, C, H, W] by `pad` and crop each image at a random offset in 0..2·pad."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    if pad >= min(h, w):  # reflect padding needs pad < size
        raise ValueError(f"translate pad {pad} must be smaller than the image ({h} x {w})")
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))  # [N, C, H, W + 2 pad]
    return out.gather(3, cols.expand(n, c, h, w))


def batch_cutout(
    x: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero one size x size square per image of x [N, C, H, W], centred uniformly in the image."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator).to(x.device)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + size)[:, None])  # [N, H]
    in_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + size)[:, None])  # [N, W]
    hole = in_y[:, :, None] & in_x[:, None, :]  # [N, H, W]
    return x.masked_fill(hole[:, None], 0.0)


class BatchAugment:
    """Flip (optional) + translate by up to `pad` px + cutout, on a normalised float batch."""

    def __init__(self, pad: int, flip: bool = True, cutout: int = 0) -> None:
        self.pad, self.flip, self.cutout = pad, flip, cutout

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.flip:
            x = batch_flip(x, generator=generator)
        x = batch_translate(x, self.pad, generator)
        return batch_cutout(x, self.cutout, generator)

    def __repr__(self) -> str:
        return f"BatchAugment(pad={self.pad}, flip={self.flip}, cutout={self.cutout})"


def _grey(img: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> luma [N, 1, H, W] (ITU-R 601, as torchvision's grayscale)."""
    return (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1).to(img)).sum(1, True)


def batch_colour(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    strength: float = 0.4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SimCLR's colour distortion (Chen et al. 2020; CIFAR: jitter 0.4 applied with p 0.8,
    grayscale with p 0.2; hue left out) on a normalised batch x [N, 3, H, W] with the dataset's
    `mean` / `std` [1, 3, 1, 1]; returns the batch normalised again."""
    n = len(x)
    img = (x * std + mean).clamp(0, 1)
    on = (torch.rand(n, generator=generator) < 0.8).view(n, 1, 1, 1)

    def factor() -> torch.Tensor:  # [N, 1, 1, 1], 1 where the jitter is off
        f = 1 + strength * (2 * torch.rand(n, generator=generator) - 1)
        return torch.where(on, f.view(n, 1, 1, 1), torch.ones(n, 1, 1, 1)).to(x)

    img = (img * factor()).clamp(0, 1)  # brightness
    m = _grey(img).mean((2, 3), keepdim=True)
    img = ((img - m) * factor() + m).clamp(0, 1)  # contrast, around the mean grey level
    g = _grey(img)
    img = ((img - g) * factor() + g).clamp(0, 1)  # saturation
    to_grey = (torch.rand(n, generator=generator) < 0.2).view(n, 1, 1, 1).to(x.device)
    img = torch.where(to_grey, _grey(img).expand_as(img), img)
    return (img - mean) / std
