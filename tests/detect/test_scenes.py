"""Digit scenes: the boxes are exactly the drawn digits."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from uniframework.detect.scenes import digit_scenes, sample_scene


def test_boxes_match_the_drawn_digits():
    d = load_digits()
    rng = np.random.default_rng(3)
    for _ in range(5):
        image, boxes, labels, masks, background = sample_scene(
            rng, d.images, d.target, 96, (3, 5), (16, 30)
        )
        bg = background.clamp(0, 1).mul(255).round().to(torch.uint8)
        changed = (image != bg).any(0)  # [S, S] pixels a digit painted
        assert len(boxes) == len(labels) == len(masks) >= 3
        inside_any = torch.zeros_like(changed)
        for box, mask in zip(boxes.long(), masks):
            x1, y1, x2, y2 = box.tolist()
            inside = torch.zeros_like(changed)
            inside[y1:y2, x1:x2] = True
            # inside the box, the changed pixels are exactly this digit's strokes
            assert torch.equal(changed & inside, mask)
            # tight: the box's first/last row and column each hold a stroke pixel
            assert mask[y1].any() and mask[y2 - 1].any()
            assert mask[:, x1].any() and mask[:, x2 - 1].any()
            inside_any |= inside
        # outside every box the image is the background, pixel for pixel
        assert torch.equal(image[:, ~inside_any], bg[:, ~inside_any])


def test_scenes_are_seeded_and_varied():
    a = digit_scenes(6, "train", image_size=96, digit_size=(16, 30), seed=1)
    b = digit_scenes(6, "train", image_size=96, digit_size=(16, 30), seed=1)
    c = digit_scenes(6, "test", image_size=96, digit_size=(16, 30), seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert not torch.equal(a.images[0], c.images[0])  # train and test layouts differ
    boxes = torch.cat([t["boxes"] for t in a.targets])
    heights = boxes[:, 3] - boxes[:, 1]
    assert heights.max() - heights.min() >= 4  # scales vary
    assert boxes.min() >= 0 and boxes.max() <= 96
    assert all(2 <= len(t["labels"]) <= 5 for t in a.targets)


def test_hidden_classes_stay_in_the_pixels():
    scenes = digit_scenes(4, "train", image_size=96, digit_size=(16, 30), seed=0)
    known = scenes.with_labels([0, 1, 2])
    assert all(torch.equal(x, y) for x, y in zip(scenes.images, known.images))
    labels = torch.cat([t["labels"] for t in known.targets])
    assert set(labels.tolist()) <= {0, 1, 2}
    assert len(labels) < sum(len(t["labels"]) for t in scenes.targets)
