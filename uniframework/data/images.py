"""Photos of any size, mode and orientation -> the uint8 RGB tensors [3, H, W] the datasets hold.

One reader, `read_image`, serves the folder scan, the lazy `ImageSet.load` and `predict`, so
training and prediction see the same pixels. With a `short_side` it keeps a working copy, not
the full photo: a 12-MP photo is 36 MB decoded but ~22 kB at a 74 px short side
(`working_short_side(64)`). The copy keeps a margin above `image_size` (1.15x), so the views'
own resize to `image_size` always reduces, from a little more detail than it returns.

- JPEGs are decoded at 1/2, 1/4 or 1/8 scale when that still covers the working size
  (`Image.draft`: the DCT does the reduction, far cheaper than a full decode);
- the rest is a bicubic resize with `reducing_gap=3.0` (a box reduction by an integer factor
  first, then bicubic over at least 3x the output size: in most cases indistinguishable from a
  full-support bicubic, much faster on large reductions);
- the EXIF orientation is applied (phones store portrait photos as rotated landscapes);
- every mode becomes RGB; 16-bit grayscale is scaled to 8 bits (`convert` would clip it);
- an image over `Image.MAX_IMAGE_PIXELS` is unreadable (`DecompressionBombError`) instead of a
  warning and a multi-GB decode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2.functional import pil_to_tensor
from tqdm import tqdm

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
)

# What a damaged, truncated, empty, non-image or oversized file raises while it is read. OSError
# covers PIL's UnidentifiedImageError and "image file is truncated"; ValueError, EOFError and
# SyntaxError come from format plugins on broken headers.
UNREADABLE = (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def working_short_side(image_size: int) -> int:
    """Short side of the kept copy for a run at `image_size`: ceil(1.15 x image_size), e.g.
    74 px for 64, 258 px for 224."""
    return math.ceil(1.15 * image_size)


def fit_short_side(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at most `short_side`, aspect ratio kept; an image
    already that small keeps its size (never upscaled)."""
    w, h = size
    if min(w, h) <= short_side:
        return w, h
    scale = short_side / min(w, h)
    if w <= h:
        return short_side, max(short_side, round(h * scale))
    return max(short_side, round(w * scale)), short_side


def scale_16bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit values [0, 65535] -> uint8 [0, 255] (x / 257, rounded; above 65535 clipped)."""
    return (pixels.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Grayscale, CMYK, YCbCr, palette convert as PIL does; 16-bit
    grayscale (I;16*, and I, which PIL gives some 16-bit files) is scaled to 8 bits first;
    palette with transparency goes through RGBA. Alpha is dropped (pixels keep their colour)."""
    if im.mode in SIXTEEN_BIT_MODES:
        im = Image.fromarray(scale_16bit(np.asarray(im)), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """`Image.open` with the pixel limit as an error: PIL only warns between 1x and 2x
    `Image.MAX_IMAGE_PIXELS` and would then decode the whole image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombWarning as w:
            raise Image.DecompressionBombError(str(w)) from None


def read_image(path: str | Path, short_side: int | None = None) -> torch.Tensor:
    """Decode `path` once -> uint8 [3, H, W], upright (EXIF) RGB.

    short_side: None = full resolution; else the working copy, shorter side at most
    `short_side` (see `working_short_side`), aspect ratio kept, never upscaled.
    Raises one of `UNREADABLE` for a damaged, truncated, empty, non-image or oversized file
    (the full decode is what catches truncation)."""
    with open_image(path) as im:
        if short_side is not None:
            im.draft("RGB", fit_short_side(im.size, short_side))  # JPEG only; else a no-op
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        rgb = to_rgb(im)
    if short_side is not None:
        size = fit_short_side(rgb.size, short_side)
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return pil_to_tensor(rgb)


def describe_error(path: Path, err: BaseException) -> str:
    """'path (ErrorType: message)': how a skipped file is named to the user."""
    return f"{path} ({type(err).__name__}: {err})"


def read_images(
    files: Sequence[Path], short_side: int | None, keep_pixels: bool, desc: str = "reading images"
) -> tuple[list[torch.Tensor | Path], list[int], list[str]]:
    """Decode each of `files` once (progress bar on a terminal) to find the unreadable ones.

    Returns (kept, index, bad): for each readable file its working copy (`keep_pixels`, uint8
    [3, H, W], see `read_image`) or its path, its position in `files`, and one
    `describe_error` line per unreadable file. Only one decoded image is alive at a time when
    `keep_pixels` is off, and only working copies when it is on."""
    kept: list[torch.Tensor | Path] = []
    index: list[int] = []
    bad: list[str] = []
    for i, f in enumerate(tqdm(files, desc=desc, unit="img", disable=None, leave=False)):
        try:
            img = read_image(f, short_side)
        except UNREADABLE as err:
            bad.append(describe_error(f, err))
            continue
        kept.append(img if keep_pixels else f)
        index.append(i)
    return kept, index, bad
