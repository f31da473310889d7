"""Views of a dataset for one purpose: which indices, which labels, which transform.

A `View` yields `(image float [3, S, S], label, index)`; the index lets later stages (exemplar
memory, pseudo-labels) point back at a training image without copying it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from ..config import DataConfig
from .datasets import ImageSet, build_datasets
from .splits import UNKNOWN, OpenWorldSplit, build_split


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


@dataclass
class OpenWorldData:
    """The datasets, the split, and the views every stage draws from."""

    cfg: DataConfig
    train: ImageSet
    test: ImageSet
    split: OpenWorldSplit

    @classmethod
    def build(cls, cfg: DataConfig, seed: int) -> OpenWorldData:
        train, test = build_datasets(cfg)
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
        return cls(cfg, train, test, split)

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
        tf = make_transform(base, self.cfg.image_size, train, self.cfg.augment)
        return View(base, idx, labels, tf)

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
        )
