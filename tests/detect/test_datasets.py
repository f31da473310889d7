"""Pascal VOC and COCO loaders on tiny files written here; the task protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from uniframework.detect.datasets import load_coco, load_voc
from uniframework.detect.tasks import build_protocol, split_images
from uniframework.errors import UserError


def _xml(objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><size><width>40</width><height>30</height></size>{body}</annotation>"


def _voc(root: Path) -> Path:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    anns = {
        "img1": [("dog", (1, 2, 10, 12), 0), ("cat", (5, 5, 20, 25), 0)],
        "img2": [("cat", (3, 3, 8, 8), 0), ("dog", (10, 10, 30, 20), 1)],  # difficult dog
    }
    for name, objs in anns.items():
        (root / "Annotations" / f"{name}.xml").write_text(_xml(objs))
        Image.new("RGB", (40, 30), (120, 30, 60)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets/Main/trainval.txt").write_text("img1\nimg2\n")
    return root


def test_voc_loader(tmp_path):
    data = load_voc(_voc(tmp_path / "voc"), "trainval")
    assert data.classes == ["cat", "dog"]  # sorted names from the annotations
    assert data.names == ["img1", "img2"]
    image, target, i = data[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.uint8 and i == 0
    # VOC's 1-based inclusive pixels -> edge coordinates
    assert target["boxes"].tolist() == [[0, 1, 10, 12], [4, 4, 20, 25]]
    assert target["labels"].tolist() == [1, 0]
    assert data.targets[1]["labels"].tolist() == [0]  # the difficult dog is left out


def test_voc_bad_input(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_voc(tmp_path / "nowhere", "trainval")
    root = _voc(tmp_path / "voc")
    (root / "Annotations" / "img2.xml").write_text("<annotation><object><name>cat</name>")
    with pytest.raises(UserError, match=r"img2\.xml.*not readable XML"):
        load_voc(root, "trainval")
    (root / "Annotations" / "img2.xml").write_text(
        "<annotation><object><name>cat</name></object></annotation>"
    )
    with pytest.raises(UserError, match="no <bndbox>"):
        load_voc(root, "trainval")
    (root / "Annotations" / "img2.xml").write_text(_xml([("cat", (3, 3, 8, 8), 0)]))
    with pytest.raises(UserError, match="class 'dog'.*not among"):
        load_voc(root, "trainval", classes=["cat"])
    with pytest.raises(UserError, match="image list"):
        load_voc(root, "test")


def _coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "train").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (50, 40), (10, 200, 30)).save(root / "train" / name)
    data = {
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 3, 10, 20]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [20, 5, 15, 15]},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
    }
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return root


def test_coco_loader(tmp_path):
    data = load_coco(_coco(tmp_path / "coco"), "train")
    assert data.classes == ["person", "car"]  # categories in id order
    assert data.names == ["a", "b"]
    assert data.targets[0]["boxes"].tolist() == [[2, 3, 12, 23], [20, 5, 35, 20]]
    assert data.targets[0]["labels"].tolist() == [0, 1]
    assert len(data.targets[1]["labels"]) == 0  # the crowd box is left out
    assert data[1][0].shape == (3, 40, 50)


def test_coco_bad_input(tmp_path):
    root = _coco(tmp_path / "coco")
    with pytest.raises(UserError, match="COCO annotation file"):
        load_coco(root, "val")
    (root / "annotations" / "instances_train.json").write_text('{"images": [}')
    with pytest.raises(UserError, match="malformed"):
        load_coco(root, "train")
    (root / "annotations" / "instances_train.json").write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="categories"):
        load_coco(root, "train")


def test_task_protocol():
    classes = [str(c) for c in range(10)]
    p = build_protocol(classes, task_sizes=[5, 3])
    assert p.tasks == [[0, 1, 2, 3, 4], [5, 6, 7]]
    assert p.unknown(0) == [5, 6, 7, 8, 9] and p.unknown(1) == [8, 9]
    assert p.previous(1) == [0, 1, 2, 3, 4] and p.seen(1) == p.order
    named = build_protocol(classes, tasks=[["3", "1"], ["7"]])
    assert named.tasks == [[3, 1], [7]]
    shuffled = build_protocol(classes, task_sizes=[4], class_order="random", seed=1)
    again = build_protocol(classes, task_sizes=[4], class_order="random", seed=1)
    assert shuffled.tasks == again.tasks and shuffled.tasks[0] != [0, 1, 2, 3]
    with pytest.raises(UserError, match="class 'seven'.*does not have"):
        build_protocol(classes, tasks=[["1"], ["seven"]])
    with pytest.raises(UserError, match="two tasks"):
        build_protocol(classes, tasks=[["1"], ["1"]])
    with pytest.raises(UserError, match="asks for 11 classes"):
        build_protocol(classes, task_sizes=[6, 5])
    chunks = split_images(10, 3, seed=0)
    assert sorted(int(i) for c in chunks for i in c) == list(range(10))
