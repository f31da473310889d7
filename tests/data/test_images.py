import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniframework.config import DataConfig
from uniframework.data import build_datasets
from uniframework.data.datasets import ImageSet, scan_folder
from uniframework.data.images import (
    fit_short_side,
    read_image,
    read_images,
    scale_16bit,
    working_short_side,
)
from uniframework.errors import UserError


def _noise(h, w, seed=0):
    """Smooth-ish RGB uint8 [h, w, 3] (blocks of noise, so JPEG keeps it recognisable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _tree(root, n=3, size=(40, 30)):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_noise(size[1], size[0], seed=i)).save(root / c / f"{i}.png")
    return root


def test_exif_orientation_6_is_applied(tmp_path):
    # stored 40 wide x 20 high, left half red / right half blue; orientation 6 = the camera was
    # turned 90 degrees clockwise, so upright the image is 20 x 40 with red on top
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(arr).save(tmp_path / "rot.jpg", quality=95, exif=exif)
    x = read_image(tmp_path / "rot.jpg")
    assert x.shape == (3, 40, 20)
    top, bottom = x[:, :15].float().mean((1, 2)), x[:, 25:].float().mean((1, 2))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((6, 9), 32768, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = read_image(tmp_path / "g16.png")
    assert x.shape == (3, 6, 9) and x.dtype == torch.uint8
    assert set(x.unique().tolist()) == {128}  # 32768 / 257, not clipped to 255


def test_scale_16bit_maps_the_full_range():
    got = scale_16bit(np.array([0, 257, 32768, 65535, 70000], np.int64))
    assert got.tolist() == [0, 1, 128, 255, 255]


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    im = Image.fromarray(_noise(10, 12)).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    im.save(tmp_path / f"x.{ext}")
    x = read_image(tmp_path / f"x.{ext}")
    assert x.shape == (3, 10, 12) and x.dtype == torch.uint8


def test_palette_with_transparency_becomes_rgb(tmp_path):
    im = Image.fromarray(_noise(10, 12)).convert("P")
    im.info["transparency"] = 0
    im.save(tmp_path / "t.png", transparency=0)
    x = read_image(tmp_path / "t.png")
    assert x.shape == (3, 10, 12)


@pytest.mark.parametrize(
    ("size", "side", "want"),
    [((4000, 3000), 74, (99, 74)), ((300, 900), 74, (74, 222)), ((50, 40), 74, (50, 40))],
)
def test_fit_short_side_keeps_aspect_and_never_upscales(size, side, want):
    assert fit_short_side(size, side) == want


def test_working_copy_has_the_working_short_side(tmp_path):
    side = working_short_side(64)
    assert side == math.ceil(1.15 * 64) == 74
    Image.fromarray(_noise(600, 800)).save(tmp_path / "big.jpg", quality=90)  # JPEG: draft
    Image.fromarray(_noise(900, 300)).save(tmp_path / "tall.png")  # PNG: resize only
    Image.fromarray(_noise(40, 50)).save(tmp_path / "small.png")
    assert read_image(tmp_path / "big.jpg", side).shape == (3, 74, 99)
    assert read_image(tmp_path / "tall.png", side).shape == (3, 222, 74)
    assert read_image(tmp_path / "small.png", side).shape == (3, 40, 50)  # not upscaled
    assert read_image(tmp_path / "big.jpg").shape == (3, 600, 800)  # None: full size


def _bad_files(root, monkeypatch):
    """Three unreadable files in class folder a: too many pixels, empty, text named .jpg."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    Image.fromarray(_noise(110, 100)).save(root / "a" / "huge.png")  # 1.1x the limit: a warning
    Image.fromarray(_noise(210, 100)).save(root / "a" / "bomb.png")  # 2.1x: PIL's own error
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "notes.jpg").write_text("not a photo\n")
    return ["huge.png", "bomb.png", "empty.jpg", "notes.jpg"]


@pytest.mark.parametrize("in_memory", [True, False])
def test_scan_skips_and_names_unreadable_files(tmp_path, monkeypatch, caplog, in_memory):
    root = _tree(tmp_path / "imgs")
    names = _bad_files(root, monkeypatch)
    with caplog.at_level(logging.WARNING):
        images, targets, classes = scan_folder(root, None, "skip", in_memory, image_size=16)
    assert classes == ["a", "b"] and targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(images) == 6 and all(torch.is_tensor(x) == in_memory for x in images)
    assert f"skipped {len(names)} corrupt" in caplog.text
    assert all(n in caplog.text for n in names)
    lines = {n: next(s for s in caplog.text.splitlines() if n in s) for n in names[:2]}
    assert all("DecompressionBombError" in line for line in lines.values())


def test_scan_stops_on_unreadable_files_with_on_corrupt_error(tmp_path, monkeypatch):
    root = _tree(tmp_path / "imgs")
    names = _bad_files(root, monkeypatch)
    with pytest.raises(UserError) as err:
        scan_folder(root, None, "error", True, image_size=16)
    assert err.value.exit_code == 2
    assert f"{len(names)} corrupt" in str(err.value)
    assert all(n in str(err.value) for n in names)


def test_read_images_reports_positions_and_errors(tmp_path):
    Image.fromarray(_noise(20, 30)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    files = [tmp_path / "bad.png", tmp_path / "ok.png"]
    kept, index, bad = read_images(files, 16, keep_pixels=False)
    assert kept == [tmp_path / "ok.png"] and index == [1]
    assert len(bad) == 1 and bad[0].startswith(f"{tmp_path / 'bad.png'} (")


def test_scan_keeps_working_copies_in_memory(tmp_path):
    root = _tree(tmp_path / "imgs", size=(200, 100))
    images, _, _ = scan_folder(root, None, "skip", True, image_size=32)
    assert {tuple(x.shape) for x in images} == {(3, 37, 74)}  # short side ceil(1.15 * 32)


def test_in_memory_and_lazy_loads_give_the_same_pixels(tmp_path):
    root = _tree(tmp_path / "imgs", size=(160, 120))
    Image.fromarray(_noise(300, 200)).save(root / "a" / "photo.jpg", quality=90)
    cfg = DataConfig(dataset="imagefolder", root=str(root), image_size=24, test_fraction=0.25)
    eager = build_datasets(cfg)
    lazy = build_datasets(cfg.model_copy(update={"in_memory": False}))
    for e, z in zip(eager, lazy, strict=True):
        assert isinstance(z.images[0], Path) and z.short_side == working_short_side(24)
        assert len(e) == len(z)
        for i in range(len(e)):
            assert torch.equal(e.load(i), z.load(i))
            assert min(e.load(i).shape[1:]) == working_short_side(24)


def test_image_set_without_short_side_reads_full_size(tmp_path):
    Image.fromarray(_noise(120, 160)).save(tmp_path / "x.png")
    full = ImageSet([tmp_path / "x.png"], np.zeros(1), ["a"])
    small = ImageSet([tmp_path / "x.png"], np.zeros(1), ["a"], short_side=30)
    assert full.load(0).shape == (3, 120, 160) and small.load(0).shape == (3, 30, 40)
