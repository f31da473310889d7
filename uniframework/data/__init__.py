"""Data: datasets (digits, cifar, imagefolder), the open-world split, views and loaders."""

from .datasets import ImageSet, build_datasets
from .splits import UNKNOWN, OpenWorldSplit, build_split
from .views import OpenWorldData, View, make_transform, resize_normalize

__all__ = [
    "UNKNOWN",
    "ImageSet",
    "OpenWorldData",
    "OpenWorldSplit",
    "View",
    "build_datasets",
    "build_split",
    "make_transform",
    "resize_normalize",
]
