"""Datasets behind one small interface: `ImageSet` = images (uint8 [3, H, W]) + integer targets.

Registered: `digits` (scikit-learn's bundled 8x8 digits, upsampled — the embedded default),
`cifar10` / `cifar100` (torchvision; downloads only with `data.download: true`) and
`imagefolder`: a person's own `labelled/<class>/` + `unlabelled/` (+ `test/<class>/`) folders,
or, for benchmarks, any `root/<class>/<image>` tree (with `train/` and `test/`, or split by
seed).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import UserError
from ..registry import DATASETS
from .images import IMAGE_EXTENSIONS, read_image, read_images, working_short_side
from .splits import UNKNOWN

log = logging.getLogger(__name__)


class ImageSet(torch.utils.data.Dataset):
    """Images + targets; `images` holds uint8 tensors [3, H, W] or file paths (decoded lazily).

    short_side: paths are decoded to the working copy of this short side (`read_image`), the
    copy a scan with `in_memory` keeps, so both settings give the same pixels; None = full size.
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor | Path],
        targets: np.ndarray,
        classes: list[str],
        hflip: bool = True,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        short_side: int | None = None,
    ) -> None:
        self.images, self.targets, self.classes = images, np.asarray(targets, np.int64), classes
        self.hflip, self.mean, self.std = hflip, mean, std  # dataset facts the transforms need
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> torch.Tensor:
        """Image i as uint8 [3, H, W]."""
        img = self.images[i]
        return read_image(img, self.short_side) if isinstance(img, Path) else img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load(i), int(self.targets[i])


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
    root: Path, classes: list[str] | None, on_corrupt: str, in_memory: bool, image_size: int
) -> tuple[list, np.ndarray, list[str]]:
    """Walk `root/<class>/*` (classes: the sub-folders in order, None = all, sorted) and decode
    every image once, at the working size of `image_size` (`working_short_side`).

    Returns (images, targets [N] int64, classes): images are the working copies (uint8
    [3, H, W]) with `in_memory`, else the paths; an `ImageSet` over paths needs
    `short_side=working_short_side(image_size)` to decode them the same way. Unreadable files
    (damaged, empty, not images, over `PIL.Image.MAX_IMAGE_PIXELS`) are named in a warning and
    left out (`on_corrupt="skip"`), or stop the scan with a `UserError` (`"error"`)."""
    images, targets, classes, _ = _scan_classes(root, classes, on_corrupt, in_memory, image_size)
    return images, targets, classes


def _scan_classes(
    root: Path, classes: list[str] | None, on_corrupt: str, in_memory: bool, image_size: int
) -> tuple[list, np.ndarray, list[str], list[Path]]:
    """`scan_folder`, plus the file of each kept image."""
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist: set data.root to a folder tree")
    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"image folder '{root}' has no class sub-folders (root/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        found = _image_files(folder)
        if not found:
            raise UserError(
                f"class folder '{folder}' is empty (no image files): add images or remove it"
            )
        files += found
        labels += [label] * len(found)
    short_side = working_short_side(image_size)
    images, index, bad = read_images(files, short_side, in_memory, desc=f"reading {root}")
    _report_unreadable(bad, root, on_corrupt)
    return images, np.asarray(labels, np.int64)[index], classes, [files[i] for i in index]


def _image_files(folder: Path) -> list[Path]:
    """Image files (by extension) under `folder`, at any depth, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def _report_unreadable(bad: list[str], root: Path, on_corrupt: str) -> None:
    """Name the unreadable files: a warning (`skip`) or a `UserError` (`error`)."""
    if not bad:
        return
    listing = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
    if on_corrupt == "error":
        raise UserError(
            f"{len(bad)} corrupt or unreadable image(s) under '{root}':\n  {listing}\n"
            "Remove or replace them, or set data.on_corrupt=skip to leave them out."
        )
    log.warning(
        "skipped %d corrupt or unreadable image(s) under %s:\n  %s", len(bad), root, listing
    )


# keys that build a benchmark split from class folders; a person's own folders say it all
BENCHMARK_KEYS = (
    "num_known",
    "labelled_fraction",
    "pool_novel_share",
    "class_order",
    "test_fraction",
    "max_per_class",
)


def own_folders(cfg: DataConfig, root: Path) -> tuple[ImageSet, ImageSet]:
    """A person's own open world (`root/labelled/<class>/`, `root/unlabelled/` at any depth,
    optional `root/test/<class>/`): train = the labelled images (targets 0..k-1) then the
    unlabelled ones (target `UNKNOWN`: no label exists); test = `test/`, whose classes beyond
    the labelled ones are new (k..). The train set keeps each image's file in `paths`."""
    defaults = type(cfg).model_fields  # (a saved run's config lists every key: compare values)
    given = sorted(k for k in BENCHMARK_KEYS if getattr(cfg, k) != defaults[k].default)
    if given:
        raise UserError(
            f"config key(s) {', '.join('data.' + k for k in given)} build a benchmark split "
            f"from class folders, but '{root}' holds your own labelled/ and unlabelled/ "
            "folders, which say which images are known: remove those keys"
        )
    on, mem, size = cfg.on_corrupt, cfg.in_memory, cfg.image_size
    side = working_short_side(size)
    images, targets, classes, files = _scan_classes(root / "labelled", None, on, mem, size)
    if len(classes) < 2:
        raise UserError(
            f"'{root / 'labelled'}' has {len(classes)} class folder ({', '.join(classes)}): a "
            "classifier needs at least 2 known classes, one sub-folder of images each"
        )
    pool_files = _image_files(root / "unlabelled")
    if not pool_files:
        raise UserError(
            f"'{root / 'unlabelled'}' holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            ": put the photos whose contents nobody knows there, at any depth"
        )
    pool, kept, bad = read_images(pool_files, side, mem, desc=f"reading {root / 'unlabelled'}")
    _report_unreadable(bad, root / "unlabelled", on)
    if not pool:
        raise UserError(f"no image under '{root / 'unlabelled'}' could be read (see above)")
    known = set(classes)
    test_dir = root / "test"
    if test_dir.is_dir():
        test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
        classes = classes + [c for c in test_classes if c not in known]  # new ones after
        te_images, te_targets, te_classes = scan_folder(test_dir, test_classes, on, mem, size)
        lut = np.array([classes.index(c) for c in te_classes], np.int64)
        test = ImageSet(te_images, lut[te_targets], classes, short_side=side)
    else:
        test = ImageSet([], np.zeros(0, np.int64), classes, short_side=side)
    train = ImageSet(
        list(images) + list(pool),
        np.concatenate([targets, np.full(len(pool), UNKNOWN, np.int64)]),
        classes,
        short_side=side,
    )
    train.paths = files + [pool_files[i] for i in kept]
    log.info(
        "own folders: %d labelled images of %d classes, %d unlabelled, %d test images",
        len(targets),
        len(known),
        len(pool),
        len(test),
    )
    return train, test


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """Any folder tree: a person's own `root/labelled/` + `root/unlabelled/` (+ `root/test/`,
    `own_folders`); else a benchmark: `root/train` + `root/test` when both exist, else one tree
    of class folders split by seed."""
    if cfg.root is None:
        raise UserError("dataset 'imagefolder' needs data.root: the folder of class folders")
    root = Path(cfg.root)
    if (root / "labelled").is_dir() and (root / "unlabelled").is_dir():
        return own_folders(cfg, root)
    side = working_short_side(cfg.image_size)  # lazy loads decode paths as the scan does
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr = scan_folder(root / "train", None, cfg.on_corrupt, cfg.in_memory, cfg.image_size)
        te = scan_folder(root / "test", tr[2], cfg.on_corrupt, cfg.in_memory, cfg.image_size)
        return ImageSet(*tr, short_side=side), ImageSet(*te, short_side=side)
    images, targets, classes = scan_folder(
        root, None, cfg.on_corrupt, cfg.in_memory, cfg.image_size
    )
    test = stratified_holdout(targets, cfg.test_fraction, seed=0)
    train_imgs = [img for img, t in zip(images, test) if not t]
    test_imgs = [img for img, t in zip(images, test) if t]
    return (
        ImageSet(train_imgs, targets[~test], classes, short_side=side),
        ImageSet(test_imgs, targets[test], classes, short_side=side),
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
            imgs,
            train.targets[keep],
            train.classes,
            train.hflip,
            train.mean,
            train.std,
            short_side=train.short_side,
        )
    return train, test
