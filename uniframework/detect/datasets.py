"""Detection data behind one interface: `DetectionSet` = images + per-image boxes and labels.

Targets are ``{"boxes": float [n, 4] (x1, y1, x2, y2 in pixels), "labels": long [n]}`` with
labels indexing `classes`. Loaders for real data on disk:

- Pascal VOC format: ``root/Annotations/<id>.xml``, ``root/JPEGImages/<id>.jpg``,
  ``root/ImageSets/Main/<split>.txt`` (one id a line). Objects marked ``difficult`` are left
  out, as the VOC evaluation ignores them.
- COCO format: ``root/annotations/instances_<split>.json`` and the images in ``root/<split>/``;
  boxes ``[x, y, w, h]`` become ``[x, y, x + w, y + h]``; ``iscrowd`` objects are left out.

Images stay on disk (decoded on access) for the loaders; the digit scenes keep tensors.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import read_image
from ..data.images import UNREADABLE
from ..errors import UserError


class DetectionSet(torch.utils.data.Dataset):
    """Images (uint8 [3, H, W] tensors or paths) with targets; item = (image, target, index)."""

    def __init__(
        self,
        images: Sequence[torch.Tensor | Path],
        targets: Sequence[dict[str, torch.Tensor]],
        classes: list[str],
        names: list[str] | None = None,
    ) -> None:
        self.images, self.targets, self.classes = list(images), list(targets), list(classes)
        self.names = list(names) if names is not None else [str(i) for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> torch.Tensor:
        img = self.images[i]
        if not isinstance(img, Path):
            return img
        try:
            return read_image(img)
        except UNREADABLE as err:
            raise UserError(
                f"image '{img}' cannot be read ({type(err).__name__}: {err}); replace or "
                "remove it from the image list"
            ) from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        return self.load(i), self.targets[i], i

    def subset(self, index: Sequence[int]) -> DetectionSet:
        index = [int(i) for i in index]
        return DetectionSet(
            [self.images[i] for i in index],
            [self.targets[i] for i in index],
            self.classes,
            [self.names[i] for i in index],
        )

    def with_labels(self, keep: Sequence[int]) -> DetectionSet:
        """The same images with only the objects of classes `keep` annotated (the others stay
        in the pixels, unlabelled: ORE's training protocol)."""
        keep_t = torch.tensor(sorted(set(int(k) for k in keep)), dtype=torch.long)
        targets = []
        for t in self.targets:
            m = torch.isin(t["labels"], keep_t)
            targets.append({"boxes": t["boxes"][m], "labels": t["labels"][m]})
        return DetectionSet(self.images, targets, self.classes, self.names)

    def class_counts(self) -> np.ndarray:
        counts = np.zeros(len(self.classes), np.int64)
        for t in self.targets:
            counts += np.bincount(t["labels"].numpy(), minlength=len(self.classes))
        return counts


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict], list[int]]:
    """Detection batches are lists (images differ in size and object count)."""
    images, targets, index = zip(*batch)
    return list(images), list(targets), list(index)


def _text(node: ET.Element, tag: str, path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise UserError(
            f"annotation '{path}' is malformed: <{node.tag}> has no <{tag}>; fix the XML "
            "(Pascal VOC format: object/name, object/bndbox/xmin..ymax)"
        )
    return child.text.strip()


def parse_voc_xml(path: Path) -> list[tuple[str, list[float], bool]]:
    """(class name, [x1, y1, x2, y2], difficult) per object of one VOC annotation file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise UserError(
            f"annotation '{path}' is not readable XML ({err}); fix or remove it and its id "
            "from ImageSets/Main"
        ) from None
    objects = []
    for obj in root.findall("object"):
        name = _text(obj, "name", path)
        box_node = obj.find("bndbox")
        if box_node is None:
            raise UserError(f"annotation '{path}' is malformed: object '{name}' has no <bndbox>")
        try:
            # VOC pixel indices are 1-based and inclusive: x1 - 1 .. x2 in edge coordinates
            x1, y1, x2, y2 = (
                float(_text(box_node, k, path)) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise UserError(
                f"annotation '{path}' is malformed: object '{name}' has a non-numeric box"
            ) from None
        if x2 < x1 or y2 < y1:
            raise UserError(
                f"annotation '{path}' is malformed: object '{name}' has xmax < xmin or ymax < ymin"
            )
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() == "1"
        objects.append((name, [x1 - 1, y1 - 1, x2, y2], is_difficult))
    return objects


def _need_dir(path: Path, what: str, fix: str) -> None:
    if not path.exists():
        raise UserError(f"{what} '{path}' does not exist: {fix}")


def load_voc(root: str | Path, split: str, classes: list[str] | None = None) -> DetectionSet:
    """A Pascal-VOC-format folder (see the module docstring); `classes` default: every name in
    this split's annotations, sorted. Objects of other classes than `classes` are an error."""
    root = Path(root)
    fix = (
        "set the detect stage's `root` to a Pascal VOC folder "
        "(Annotations, JPEGImages, ImageSets/Main)"
    )
    _need_dir(root, "VOC folder", fix)
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    _need_dir(ids_file, "VOC image list", f"create it (one image id a line) or {fix}")
    ids = [line.split()[0] for line in ids_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"VOC image list '{ids_file}' is empty: list image ids, one a line")
    parsed = []
    for i in ids:
        xml = root / "Annotations" / f"{i}.xml"
        _need_dir(xml, "VOC annotation", f"add it or remove '{i}' from {ids_file}")
        parsed.append(parse_voc_xml(xml))
    names = sorted({o[0] for objs in parsed for o in objs})
    classes = list(classes) if classes is not None else names
    index = {c: k for k, c in enumerate(classes)}
    images, targets = [], []
    for i, objs in zip(ids, parsed):
        jpg = next((p for p in (root / "JPEGImages").glob(f"{i}.*")), None)
        if jpg is None:
            raise UserError(f"VOC image for '{i}' is missing in '{root / 'JPEGImages'}': add it")
        unknown = [o[0] for o in objs if o[0] not in index]
        if unknown:
            raise UserError(
                f"annotation of '{i}' names class '{unknown[0]}', which is not among the "
                f"classes {classes}: add it to the class list or fix the annotation"
            )
        objs = [o for o in objs if not o[2]]
        boxes = torch.tensor([o[1] for o in objs], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([index[o[0]] for o in objs], dtype=torch.long)
        images.append(jpg)
        targets.append({"boxes": boxes, "labels": labels})
    return DetectionSet(images, targets, classes, ids)


def load_coco(root: str | Path, split: str, classes: list[str] | None = None) -> DetectionSet:
    """A COCO-format folder (see the module docstring); classes default: the json's categories
    in id order. Images without annotations are kept (they have empty targets)."""
    root = Path(root)
    fix = (
        "set the detect stage's `root` to a COCO folder "
        "(annotations/instances_<split>.json + <split>/)"
    )
    _need_dir(root, "COCO folder", fix)
    ann_file = root / "annotations" / f"instances_{split}.json"
    _need_dir(ann_file, "COCO annotation file", fix)
    try:
        data = json.loads(ann_file.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        cat_name = {int(c["id"]): str(c["name"]) for c in cats}
        image_rows = data["images"]
        anns = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"COCO annotation file '{ann_file}' is malformed ({type(err).__name__}: {err}); it "
            "needs 'images', 'categories' and 'annotations' lists"
        ) from None
    classes = list(classes) if classes is not None else [cat_name[k] for k in sorted(cat_name)]
    index = {c: k for k, c in enumerate(classes)}
    per_image: dict[int, list[tuple[list[float], int]]] = {int(r["id"]): [] for r in image_rows}
    for a in anns:
        try:
            name = cat_name[int(a["category_id"])]
            x, y, w, h = (float(v) for v in a["bbox"])
            img = int(a["image_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"COCO annotation file '{ann_file}': annotation {a.get('id')} is malformed "
                f"({type(err).__name__}: {err}); it needs image_id, category_id, bbox [x,y,w,h]"
            ) from None
        if name not in index:
            raise UserError(
                f"COCO annotation {a.get('id')} has class '{name}', not among {classes}: add "
                "it to the class list or fix the file"
            )
        if img not in per_image:
            raise UserError(f"COCO annotation {a.get('id')} points at unknown image id {img}")
        if a.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue
        per_image[img].append(([x, y, x + w, y + h], index[name]))
    images, targets, names = [], [], []
    for r in image_rows:
        path = root / split / str(r["file_name"])
        _need_dir(path, "COCO image", f"add it to '{root / split}' or drop it from {ann_file}")
        objs = per_image[int(r["id"])]
        boxes = torch.tensor([o[0] for o in objs], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([o[1] for o in objs], dtype=torch.long)
        images.append(path)
        targets.append({"boxes": boxes, "labels": labels})
        names.append(Path(str(r["file_name"])).stem)
    return DetectionSet(images, targets, classes, names)
