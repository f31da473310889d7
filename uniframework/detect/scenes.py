"""Embedded detection data: scikit-learn's digits pasted on textured canvases, with boxes.

Each scene holds a few digits of varied size, aspect and position, never overlapping (so a
box holds one digit), each in a random saturated colour on a smooth noise + stripes canvas. The
box of a digit is the tight box of its stroke mask: every pixel the digit changed lies inside
it and every row and column of the box holds a stroke pixel. Train scenes use the digit images
of the 80 % train split of `uniframework.data.datasets.digits`, test scenes the other 20 %, so
no digit image is seen in both. Everything is drawn from one seeded numpy generator.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.datasets import stratified_holdout
from .datasets import DetectionSet

DIGIT_CLASSES = [str(c) for c in range(10)]
STROKE = 0.2  # upsampled intensity above which a pixel belongs to the digit


def textured_background(rng: np.random.Generator, size: int) -> torch.Tensor:
    """Float [3, S, S] in about [0.25, 0.75]: low-frequency colour noise plus faint stripes."""
    coarse = torch.from_numpy(rng.uniform(0.3, 0.7, (1, 3, 5, 5))).float()
    noise = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5)
    stripes = torch.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)).float())
    return (noise + 0.05 * stripes).clamp(0.25, 0.75)


def render_digit(digit: np.ndarray, height: int, width: int) -> torch.Tensor:
    """8x8 digit (values 0..16) -> intensity [h, w] in [0, 1] (bilinear upsampling)."""
    x = torch.from_numpy(digit).float().div(16.0)[None, None]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def compose_scene(
    background: torch.Tensor,
    digits: list[torch.Tensor],
    positions: list[tuple[int, int]],
    colours: list[tuple[float, float, float]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste digit intensities ``[h, w]`` at ``(top, left)`` over ``background [3, S, S]``.

    Returns the uint8 image ``[3, S, S]``, boxes ``[n, 4]`` (x1, y1, x2, y2; pixel edges, so a
    box covering columns a..b has x1 = a, x2 = b + 1) and stroke masks ``[n, S, S]`` bool.
    A pixel is painted only where its stroke mask is set: alpha = intensity there, 0 elsewhere.
    """
    image = background.clone()
    size = background.shape[-1]
    boxes, masks = [], []
    for inten, (top, left), colour in zip(digits, positions, colours):
        h, w = inten.shape
        stroke = inten > STROKE
        alpha = torch.where(stroke, inten.clamp(0.5, 1.0), torch.zeros_like(inten))
        region = image[:, top : top + h, left : left + w]
        c = torch.tensor(colour).view(3, 1, 1)
        image[:, top : top + h, left : left + w] = region * (1 - alpha) + c * alpha
        mask = torch.zeros(size, size, dtype=torch.bool)
        mask[top : top + h, left : left + w] = stroke
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        masks.append(mask)
    image = image.clamp(0, 1).mul(255).round().to(torch.uint8)
    box_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    mask_t = torch.stack(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool)
    return image, box_t, mask_t


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A saturated colour: each channel near 0 or near 1, never mid-grey like the canvas."""
    while True:
        c = np.where(rng.random(3) < 0.5, rng.uniform(0.0, 0.12, 3), rng.uniform(0.88, 1.0, 3))
        if 0.5 < c.sum() < 2.6:  # not black-ish nor white-ish on every channel
            return tuple(float(v) for v in c)


def sample_scene(
    rng: np.random.Generator,
    images: np.ndarray,
    targets: np.ndarray,
    size: int,
    objects: tuple[int, int],
    digit_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One scene: (image uint8 [3, S, S], boxes [n, 4], labels [n], masks, background)."""
    background = textured_background(rng, size)
    want = int(rng.integers(objects[0], objects[1] + 1))
    taken = np.zeros((size, size), bool)
    digits, positions, colours, labels = [], [], [], []
    for _ in range(want):
        for _try in range(30):  # rejection sampling for a free, non-overlapping spot
            s = int(rng.integers(digit_size[0], digit_size[1] + 1))
            h, w = s, max(8, int(round(s * rng.uniform(0.75, 1.15))))
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            if not taken[max(0, top - 2) : top + h + 2, max(0, left - 2) : left + w + 2].any():
                break
        else:
            continue
        i = int(rng.integers(len(images)))
        inten = render_digit(images[i], h, w)
        if not bool((inten > STROKE).any()):
            continue
        taken[top : top + h, left : left + w] = True
        digits.append(inten)
        positions.append((top, left))
        colours.append(_colour(rng))
        labels.append(int(targets[i]))
    image, boxes, masks = compose_scene(background, digits, positions, colours)
    return image, boxes, torch.tensor(labels, dtype=torch.long), masks, background


def digit_scenes(
    num_images: int,
    split: str = "train",
    image_size: int = 112,
    objects: tuple[int, int] = (2, 5),
    digit_size: tuple[int, int] = (18, 36),
    seed: int = 0,
) -> DetectionSet:
    """`num_images` scenes of the digits of `split` ("train" or "test"), all 10 classes
    annotated (the task protocol hides the labels of classes that are not yet known)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    test = stratified_holdout(d.target, 0.2, seed=0)  # the same split as the `digits` dataset
    pick = test if split == "test" else ~test
    images, targets = d.images[pick], d.target[pick]
    # a different stream per split, so train and test scenes never share a layout
    rng = np.random.default_rng([seed, 1 if split == "test" else 0])
    out_images, out_targets = [], []
    for _ in range(num_images):
        image, boxes, labels, _, _ = sample_scene(
            rng, images, targets, image_size, objects, digit_size
        )
        out_images.append(image)
        out_targets.append({"boxes": boxes, "labels": labels})
    names = [f"{split}_{i:05d}" for i in range(num_images)]
    return DetectionSet(out_images, out_targets, list(DIGIT_CLASSES), names)
