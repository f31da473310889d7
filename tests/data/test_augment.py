"""Batched augmentation (data/augment.py) and the batched view (views.BatchView)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uniframework.config import DataConfig
from uniframework.data import OpenWorldData
from uniframework.data.augment import (
    BatchAugment,
    batch_colour,
    batch_cutout,
    batch_flip,
    batch_translate,
)
from uniframework.data.views import BatchView


def _batch(n=16, size=12):
    return torch.arange(n * 3 * size * size, dtype=torch.float32).view(n, 3, size, size)


def test_flip_mirrors_about_half_of_the_images():
    x = _batch(200)
    out = batch_flip(x, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_translate_is_a_crop_of_the_reflect_padded_image():
    x, pad = _batch(32), 3
    out = batch_translate(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    offsets = set()
    for o, p in zip(out, padded):  # each output is one of the (2 pad + 1)^2 crops
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(o, p[:, dy : dy + 12, dx : dx + 12])
        ]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 10  # really random per image
    assert torch.equal(batch_translate(x, 0), x)
    with pytest.raises(ValueError, match="smaller than the image"):
        batch_translate(x, 12)


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(64, 3, 16, 16)
    out = batch_cutout(x, 6, torch.Generator().manual_seed(0))
    zeros = (out == 0).all(1)  # [N, H, W]: every channel zeroed together
    assert ((out == 0) | (out == 1)).all() and (zeros.sum((1, 2)) <= 36).all()
    assert (zeros.sum((1, 2)) == 36).sum() > 10  # fully inside for many images
    for z in zeros:  # the hole is one axis-aligned rectangle
        rows, cols = z.any(1).nonzero(), z.any(0).nonzero()
        if len(rows):
            assert z.sum() == len(rows) * len(cols)
    assert torch.equal(batch_cutout(x, 0), x)


def test_batch_augment_keeps_shape_and_changes_images():
    x = _batch(8)
    aug = BatchAugment(pad=2, flip=True, cutout=4)
    out = aug(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)


def _data(**kw):
    cfg = DataConfig(num_known=5, image_size=16, max_per_class=20, batch_size=8, **kw)
    return OpenWorldData.build(cfg, seed=0)


def _batched(data, **kw):
    """The same split and images read through the batched path (`data.batched`)."""
    cfg = data.cfg.model_copy(update={"batched": True, **kw})
    return OpenWorldData(cfg, data.train, data.test, data.split)


def test_batch_view_matches_the_per_image_test_transform():
    data = _data()
    per_image, batched = data.view("test_known"), _batched(data).view("test_known")
    assert isinstance(batched, BatchView) and batched.cache.dtype == torch.uint8
    x, y, idx = batched.__getitems__([0, 3, 5])
    want = torch.stack([per_image[i][0] for i in (0, 3, 5)])
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
    assert y.tolist() == per_image.labels[[0, 3, 5]].tolist()
    assert idx.tolist() == per_image.indices[[0, 3, 5]].tolist()


def test_batched_train_loader_keeps_labels_and_indices():
    data = _batched(_data(), cutout=4)
    view = data.view("labelled", train=True)
    assert view.augment.pad == 2 and view.augment.cutout == 4
    assert view.augment.flip is False  # digits: no flips
    seen = []
    for x, y, idx in data.loader(view, train=True):
        assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
        # the label belongs to the image the index names
        truth = data.split.remap(data.train.targets[idx.numpy()])
        assert y.tolist() == truth.tolist()
        seen += idx.tolist()
    assert len(seen) == len(set(seen)) and set(seen) <= set(data.split.labelled.tolist())
    clean = data.view("labelled").__getitems__(list(range(8)))[0]
    augmented = view.__getitems__(list(range(8)))[0]
    assert not torch.equal(clean, augmented)  # augmentation really changes the images


def test_batched_view_hides_labels_and_reads_files_lazily(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / c / f"{i}.png")
    common = dict(dataset="imagefolder", root=str(tmp_path), image_size=16, num_known=2)
    lazy = OpenWorldData.build(DataConfig(in_memory=False, batched=True, **common), seed=0)
    eager = OpenWorldData.build(DataConfig(in_memory=True, batched=True, **common), seed=0)
    a, b = lazy.view("test"), eager.view("test")
    assert a.cache is None and b.cache is not None and b.cache.shape[-1] == 16
    positions = list(range(len(a)))
    torch.testing.assert_close(a.__getitems__(positions)[0], b.__getitems__(positions)[0])
    pool = eager.view("unlabelled", train=True, hide_labels=True)
    assert set(pool.__getitems__(list(range(len(pool))))[1].tolist()) == {-1}


def test_subset_views_follow_their_indices_and_give_two_views():
    """Discover's and incremental's views (`subset_view`) are batched too; the cache follows a
    replaced index array; `two_views` draws two different augmentations of the same images."""
    from uniframework.discover.uno import BatchTwoViews, two_views

    data = _batched(_data())
    idx = data.split.labelled[:10]
    view = data.subset_view(idx, np.arange(10) % 5, train=True)
    assert isinstance(view, BatchView) and len(view.cache) == 10
    view.indices = idx[:4]
    assert len(view.cache) == 4
    pair = two_views(view)
    assert isinstance(pair, BatchTwoViews)
    x1, x2, y, index = next(iter(data.loader(pair, train=False, batch_size=4)))
    assert x1.shape == x2.shape == (4, 3, 16, 16) and not torch.equal(x1, x2)
    assert y.tolist() == [0, 1, 2, 3] and index.tolist() == idx[:4].tolist()
    assert not isinstance(two_views(_data().subset_view(idx, np.zeros(10))), BatchTwoViews)


def test_colour_jitter_stays_in_range_and_without_jitter_is_identity_or_grey():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.full((1, 3, 1, 1), 0.25)
    img = torch.rand(200, 3, 8, 8, generator=g)
    x = (img - mean) / std
    out = batch_colour(x, mean, std, 0.4, torch.Generator().manual_seed(1))
    back = out * std + mean
    assert out.shape == x.shape and back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    assert torch.equal(out, batch_colour(x, mean, std, 0.4, torch.Generator().manual_seed(1)))
    changed = (back - img).abs().amax((1, 2, 3)) > 1e-4
    assert 0.7 < changed.float().mean() < 0.95  # jitter p 0.8, grey p 0.2 (~0.84 touched)
    # no jitter: each image is itself, or its luma on all three channels (p 0.2)
    plain = batch_colour(x, mean, std, 0.0, torch.Generator().manual_seed(2)) * std + mean
    luma = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    same = (plain - img).abs().amax((1, 2, 3)) < 1e-5
    grey = (plain - luma).abs().amax((1, 2, 3)) < 1e-5
    assert (same ^ grey).all() and 0.1 < grey.float().mean() < 0.3
