"""Datasets behind one small interface: `ImageSet` = images (uint8 [3, H, W]) + integer targets.

Registered: `digits` (scikit-learn's bundled 8x8 digits, upsampled — the embedded default),
`cifar10` / `cifar100` (torchvision; downloads only with `data.download: true`) and
`imagefolder` (any `root/<class>/<image>` tree, with `train/` and `test/` or split by seed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from ..config import DataConfig
from ..errors import UserError
from ..registry import DATASETS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class ImageSet(torch.utils.data.Dataset):
    """Images + targets; `images` holds uint8 tensors [3, H, W] or file paths (decoded lazily)."""

    def __init__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor | Path],
        targets: np.ndarray,
        classes: list[str],
        hflip: bool = True,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        self.images, self.targets, self.classes = images, np.asarray(targets, np.int64), classes
        self.hflip, self.mean, self.std = hflip, mean, std  # dataset facts the transforms need

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> torch.Tensor:
        """Image i as uint8 [3, H, W]."""
        img = self.images[i]
        return read_image(img) if isinstance(img, Path) else img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(i), int(self.targets[i])


def read_image(path: Path) -> torch.Tensor:
    """Decode fully (so truncation is caught), convert grayscale / RGBA / palette to RGB."""
    with Image.open(path) as im:
        im.load()
        return pil_to_tensor(im.convert("RGB"))


def stratified_holdout(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask selecting ~`fraction` of each class (at least one when a class has >1)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(targets), bool)
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        mask[idx[: max(n, 1 if len(idx) > 1 else 0)]] = True
    return mask


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 1,797 real 8x8 digits, upsampled (bilinear) to `image_size`, 3 channels.

    The 80/20 train/test split is fixed (seed 0) so every run is scored on the same test images.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=cfg.image_size, mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    test = stratified_holdout(d.target, 0.2, seed=0)
    classes = [str(c) for c in range(10)]
    # digits are not mirror-symmetric: no horizontal flips; statistics of the upsampled set
    stats = dict(hflip=False, mean=(0.19,) * 3, std=(0.33,) * 3)
    return (
        ImageSet(x[~test], d.target[~test], classes, **stats),
        ImageSet(x[test], d.target[test], classes, **stats),
    )


def _cifar(cfg: DataConfig, cls, name: str) -> tuple[ImageSet, ImageSet]:
    root = Path(cfg.root or "data")
    try:
        sets = [cls(str(root), train=t, download=cfg.download) for t in (True, False)]
    except RuntimeError as err:
        raise UserError(
            f"{name} was not found under '{root}' ({err}). Set data.root to the folder that "
            f"holds it, or data.download=true to fetch it (needs network)."
        ) from None
    mean = (0.4914, 0.4822, 0.4465) if name == "CIFAR-10" else (0.5071, 0.4865, 0.4409)
    std = (0.2470, 0.2435, 0.2616) if name == "CIFAR-10" else (0.2673, 0.2564, 0.2762)
    return tuple(
        ImageSet(
            torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(),  # [N, 3, 32, 32] uint8
            np.asarray(s.targets),
            list(s.classes),
            mean=mean,
            std=std,
        )
        for s in sets
    )


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10 through torchvision (downloads only when `data.download: true`)."""
    from torchvision.datasets import CIFAR10

    return _cifar(cfg, CIFAR10, "CIFAR-10")


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """CIFAR-100 through torchvision (downloads only when `data.download: true`)."""
    from torchvision.datasets import CIFAR100

    return _cifar(cfg, CIFAR100, "CIFAR-100")


def scan_folder(
    root: Path, classes: list[str] | None, on_corrupt: str, in_memory: bool
) -> tuple[list, np.ndarray, list[str]]:
    """Walk `root/<class>/*`; decode every image once to find corrupt ones (skip or stop)."""
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist: set data.root to a folder tree")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"image folder '{root}' has no class sub-folders (root/<class>/<image>)")
    images, targets, bad = [], [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(
                f"class folder '{folder}' is empty (no image files): add images or remove it"
            )
        for f in files:
            try:
                img = read_image(f)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                bad.append(f"{f} ({type(err).__name__}: {err})")
                continue
            images.append(img if in_memory else f)
            targets.append(label)
    if bad:
        listing = "\n  ".join(bad[:20]) + (
            f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        )
        if on_corrupt == "error":
            raise UserError(
                f"{len(bad)} corrupt or unreadable image(s) under '{root}':\n  {listing}\n"
                "Remove or replace them, or set data.on_corrupt=skip to leave them out."
            )
        log.warning(
            "skipped %d corrupt or unreadable image(s) under %s:\n  %s", len(bad), root, listing
        )
    return images, np.asarray(targets, np.int64), classes


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """Any folder tree. `root/train` + `root/test` when both exist, else one tree split by seed."""
    if cfg.root is None:
        raise UserError("dataset 'imagefolder' needs data.root: the folder of class folders")
    root = Path(cfg.root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr = scan_folder(root / "train", None, cfg.on_corrupt, cfg.in_memory)
        te = scan_folder(root / "test", tr[2], cfg.on_corrupt, cfg.in_memory)
        return ImageSet(*tr), ImageSet(*te)
    images, targets, classes = scan_folder(root, None, cfg.on_corrupt, cfg.in_memory)
    test = stratified_holdout(targets, cfg.test_fraction, seed=0)
    train_imgs = [img for img, t in zip(images, test) if not t]
    test_imgs = [img for img, t in zip(images, test) if t]
    return (
        ImageSet(train_imgs, targets[~test], classes),
        ImageSet(test_imgs, targets[test], classes),
    )


def build_datasets(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """(train, test) for `cfg.dataset`, with `max_per_class` subsampling of the train set."""
    train, test = DATASETS.get(cfg.dataset)(cfg)
    if cfg.max_per_class is not None:
        rng = np.random.default_rng(0)
        keep = np.concatenate(
            [
                rng.permutation(np.flatnonzero(train.targets == c))[: cfg.max_per_class]
                for c in np.unique(train.targets)
            ]
        )
        keep.sort()
        imgs = (
            train.images[torch.from_numpy(keep)]
            if torch.is_tensor(train.images)
            else [train.images[i] for i in keep]
        )
        train = ImageSet(
            imgs, train.targets[keep], train.classes, train.hflip, train.mean, train.std
        )
    return train, test
