"""Views of a dataset for one purpose: which indices, which labels, which transform.

A `View` yields `(image float [3, S, S], label, index)`; the index lets later stages (exemplar
memory, pseudo-labels) point back at a training image without copying it. A `BatchView` is the
same view read a batch at a time (`__getitems__`): its images are resized once and kept as uint8,
and a batch is normalised and augmented as one tensor (`augment.py`) — much faster on a CPU at
small image sizes, where the per-image transforms cost more than the training step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..config import DataConfig
from .augment import BatchAugment
from .datasets import ImageSet, build_datasets
from .splits import UNKNOWN, OpenWorldSplit, build_split, build_user_split, pool_makeup


def make_transform(base: ImageSet, size: int, train: bool, augment: bool = True) -> v2.Compose:
    """uint8 [3, H, W] -> normalised float [3, size, size]; train adds pad-crop (+ flip)."""
    extra: list = []
    if train and augment:
        extra.append(v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"))
        if base.hflip:
            extra.append(v2.RandomHorizontalFlip())
    return resize_normalize(size, base.mean, base.std, extra)


def resize_normalize(
    size: int, mean: Sequence[float], std: Sequence[float], augment: Sequence = ()
) -> v2.Compose:
    """uint8 [3, H, W] -> float [3, size, size]: shorter side resized to `size`, centre crop,
    `augment`, scaled to [0, 1], normalised by `mean` / `std`. Without `augment` it is the test
    view, which `predict` rebuilds for an exported model from the numbers in its metadata."""
    steps: list = [v2.Resize(size, antialias=True), v2.CenterCrop(size), *augment]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class View(torch.utils.data.Dataset):
    """Indices into `base` with their labels (model labels; -1 = hidden) and a transform."""

    def __init__(self, base: ImageSet, indices, labels, transform) -> None:
        self.base, self.transform = base, transform
        self.indices = np.asarray(indices, np.int64)
        self.labels = np.asarray(labels, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        j = int(self.indices[i])
        return self.transform(self.base.load(j)), int(self.labels[i]), j


class BatchView(View):
    """A `View` a DataLoader reads a batch at a time: `__getitems__(positions)` returns the
    collated `(x float [N, 3, S, S], labels [N], indices [N])` (use `collate_fn=whole_batch`).

    The view's images are resized + centre-cropped to S once and kept as uint8 [N, 3, S, S]
    when the dataset holds them in memory (files are decoded per batch otherwise). A batch is
    normalised with the dataset's mean / std, then `augment` (a `BatchAugment`, train views)
    runs on it; without `augment` a batch equals the per-image test transform's images.
    Indexing one item (`view[i]`) still applies the per-image `transform`.
    """

    def __init__(self, base: ImageSet, indices, labels, transform, size: int, augment=None) -> None:
        super().__init__(base, indices, labels, transform)
        self.size, self.augment = size, augment
        self.mean = torch.tensor(base.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(base.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
        self._cache: torch.Tensor | None = None
        self._cached_for = None  # the `indices` array the cache was built from

    @property
    def cache(self) -> torch.Tensor | None:
        """uint8 [N, 3, S, S] of the view's images when the dataset holds them in memory (built
        on first use, rebuilt if `indices` is replaced); None = decode files per batch."""
        if self._cached_for is not self.indices:
            in_memory = torch.is_tensor(self.base.images) or not any(
                isinstance(self.base.images[int(j)], Path) for j in self.indices
            )
            self._cache = self._stack(self.indices) if in_memory else None
            self._cached_for = self.indices
        return self._cache

    def _image(self, j: int) -> torch.Tensor:
        img = self.base.load(j)
        return img if tuple(img.shape[-2:]) == (self.size, self.size) else self._resize(img)

    def _stack(self, indices) -> torch.Tensor:
        if len(indices) == 0:
            return torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)
        return torch.stack([self._image(int(j)) for j in indices])

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.as_tensor(positions, dtype=torch.int64)
        cache = self.cache
        raw = cache[pos] if cache is not None else self._stack(self.indices[pos])
        x = (raw.float().div_(255.0) - self.mean) / self.std
        if self.augment is not None:
            x = self.augment(x)
        return x, torch.from_numpy(self.labels[pos.numpy()]), torch.from_numpy(self.indices[pos])


def whole_batch(batch):
    """collate_fn for a `BatchView`: `__getitems__` already returns the collated batch."""
    return batch


@dataclass
class OpenWorldData:
    """The datasets, the split, and the views every stage draws from.

    Only the labelled and held-out known images carry a label in `train.targets`; every other
    train image's target is `UNKNOWN`, so no stage can read the pool's classes. In a benchmark
    (every image in a class folder) the hidden classes are kept apart in `truth`, which only
    evaluation reads (`pool_truth`, `pool_makeup`); for a person's own folders (`user_mode`:
    an unlabelled folder) there is no truth at all."""

    cfg: DataConfig
    train: ImageSet
    test: ImageSet
    split: OpenWorldSplit
    truth: np.ndarray | None = None  # [len(train)] model labels (benchmark; evaluation only)

    @classmethod
    def build(cls, cfg: DataConfig, seed: int) -> OpenWorldData:
        train, test = build_datasets(cfg)
        if (train.targets == UNKNOWN).any():  # a person's unlabelled folder: no truth
            split = build_user_split(
                train.targets, test.targets, len(train.classes), cfg.val_fraction, seed
            )
            return cls(cfg, train, test, split)
        split = build_split(
            train.targets,
            test.targets,
            num_known=cfg.num_known,
            class_order=cfg.class_order,
            labelled_fraction=cfg.labelled_fraction,
            val_fraction=cfg.val_fraction,
            num_tasks=cfg.num_tasks,
            seed=seed,
            pool_novel_share=cfg.pool_novel_share,
        )
        truth = split.remap(train.targets)
        hidden = copy.copy(train)  # the same images; labels only where the split gives them
        hidden.targets = np.full_like(train.targets, UNKNOWN)
        shown = np.concatenate([split.labelled, split.val])
        hidden.targets[shown] = train.targets[shown]
        return cls(cfg, hidden, test, split, truth)

    @property
    def user_mode(self) -> bool:
        """A person's own folders: the pool's classes are known to nobody."""
        return self.truth is None

    def pool_truth(self, index) -> np.ndarray | None:
        """[N] true model labels of train images `index` (evaluation only); None without
        truth (a person's own pool)."""
        return None if self.truth is None else self.truth[np.asarray(index, np.int64)]

    def pool_makeup(self) -> dict[str, float]:
        """How the unlabelled pool was made up (evaluation only; empty without truth)."""
        return pool_makeup(self.split, self.truth)

    @property
    def class_names(self) -> list[str]:
        return [self.train.classes[c] for c in self.split.class_order]

    def view(self, part: str, train: bool = False, hide_labels: bool = False) -> View:
        """`part` in labelled | val | unlabelled | test | test_known | test_novel."""
        base = self.test if part.startswith("test") else self.train
        idx = getattr(self.split, "test" if part.startswith("test") else part)
        labels = self.split.remap(base.targets[idx])
        if part in ("test_known", "test_novel"):
            keep = (
                labels < self.split.num_known
                if part == "test_known"
                else labels >= self.split.num_known
            )
            idx, labels = idx[keep], labels[keep]
        if hide_labels:
            labels = np.full_like(labels, UNKNOWN)
        return self.subset_view(idx, labels, train, base)

    def subset_view(self, index, labels, train: bool = False, base: ImageSet | None = None) -> View:
        """A view of any images of `base` (default: the train set) with the given labels.

        With `data.batched` it is a `BatchView` (read a batch at a time); a train view then
        augments whole batches — flip where allowed, translation by up to `data.translate` px
        (None = the per-image path's pad, image_size // 8) and `data.cutout` — when
        `data.augment`."""
        base, cfg = (self.train if base is None else base), self.cfg
        tf = make_transform(base, cfg.image_size, train, cfg.augment)
        if not cfg.batched:
            return View(base, index, labels, tf)
        augment = None
        if train and cfg.augment:
            pad = max(1, cfg.image_size // 8) if cfg.translate is None else cfg.translate
            augment = BatchAugment(pad, flip=base.hflip, cutout=cfg.cutout)
        return BatchView(base, index, labels, tf, cfg.image_size, augment)

    def loader(self, view: View, train: bool = False, batch_size: int | None = None) -> DataLoader:
        """A DataLoader; Lightning swaps in a DistributedSampler under DDP."""
        workers = self.cfg.num_workers
        return DataLoader(
            view,
            batch_size=batch_size or self.cfg.batch_size,
            shuffle=train,
            drop_last=train and len(view) > (batch_size or self.cfg.batch_size),
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=whole_batch if hasattr(view, "__getitems__") else None,
        )
