import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from uniframework.config import DataConfig
from uniframework.data import OpenWorldData, build_datasets
from uniframework.errors import UserError


def _tree(root, classes=("a", "b"), n=3, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_digits_upsampled_rgb_uint8():
    train, test = build_datasets(DataConfig(image_size=16))
    assert len(train) + len(test) == 1797
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and 0 <= y < 10
    assert set(np.unique(test.targets)) == set(range(10))


def test_digits_view_normalises_and_hides_labels():
    data = OpenWorldData.build(DataConfig(num_known=5, labelled_fraction=0.5), seed=0)
    x, y, idx = data.view("labelled", train=True)[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0 <= y < 5
    unl = data.view("unlabelled", hide_labels=True)
    assert set(unl.labels.tolist()) == {-1}
    assert set(data.view("test_novel").labels.tolist()) == {5, 6, 7, 8, 9}


def test_imagefolder_converts_grayscale_and_rgba(tmp_path):
    root = _tree(tmp_path / "imgs")
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(root / "a" / "gray.png")
    Image.fromarray(np.zeros((9, 9, 4), np.uint8), "RGBA").save(root / "b" / "rgba.png")
    train, test = build_datasets(
        DataConfig(dataset="imagefolder", root=str(root), test_fraction=0.25)
    )
    assert len(train) + len(test) == 8
    assert train.classes == ["a", "b"]
    for i in range(len(train)):
        assert train.load(i).shape[0] == 3


def test_imagefolder_train_test_subfolders(tmp_path):
    _tree(tmp_path / "d" / "train", n=4)
    _tree(tmp_path / "d" / "test", n=2)
    train, test = build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path / "d")))
    assert (len(train), len(test)) == (8, 4)


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_images_are_skipped_and_named(tmp_path, caplog, in_memory):
    root = _tree(tmp_path / "imgs")
    (root / "a" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    cfg = DataConfig(dataset="imagefolder", root=str(root), in_memory=in_memory)
    with caplog.at_level(logging.WARNING):
        train, test = build_datasets(cfg)
    assert len(train) + len(test) == 6
    assert "skipped 2 corrupt" in caplog.text
    assert "garbage.jpg" in caplog.text and "truncated.png" in caplog.text
    with pytest.raises(UserError, match="(?s)2 corrupt.*garbage.jpg"):
        build_datasets(cfg.model_copy(update={"on_corrupt": "error"}))


def test_empty_class_and_missing_root_stop_with_the_path(tmp_path):
    root = _tree(tmp_path / "imgs")
    (root / "empty").mkdir()
    with pytest.raises(UserError, match=r"class folder '.*empty' is empty"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(root)))
    with pytest.raises(UserError, match=r"'.*nowhere' does not exist"):
        build_datasets(DataConfig(dataset="imagefolder", root=str(tmp_path / "nowhere")))


def test_cifar10_reads_torchvision_batches(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / CIFAR10.meta["filename"]).write_bytes(pickle.dumps(meta))
    # fake batches have other checksums than the real ones torchvision checks
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    train, test = build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert (len(train), len(test)) == (20, 4)
    assert train.load(0).shape == (3, 32, 32) and train.classes[0] == "c0"


def test_cifar_missing_without_download_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data.download=true"):
        build_datasets(DataConfig(dataset="cifar10", root=str(tmp_path)))
