"""Progressive learning's RandAugment magnitudes: the paper's TF scale by default."""

import pytest
import torch
from torchvision.transforms import v2

from uniframework.config import load_config
from uniframework.data.views import OpenWorldData
from uniframework.errors import UserError
from uniframework.supervised.progressive import (
    ProgressiveLearning,
    ProgressiveOptions,
    ProgressiveTransform,
    RandAugmentPastMax,
    endpoints,
    progressive_schedule,
    rand_augment,
    torchvision_magnitude,
)

from ..conftest import TINY


def test_tf_levels_map_to_torchvision_magnitudes():
    assert ProgressiveOptions().randaugment_scale == "tf"  # the paper's scale is the default
    assert [torchvision_magnitude(m, "tf") for m in (0, 5, 10, 15)] == [0, 15, 30, 45]
    assert [torchvision_magnitude(m, "torchvision") for m in (0, 5, 10, 15)] == [0, 5, 10, 15]


def test_tf_10_is_torchvisions_top_bin_and_tf_5_its_middle():
    opts = ProgressiveOptions(randaugment=(5, 10), stages=2)
    start, end = endpoints(opts, 32)
    assert (start.randaugment, end.randaugment) == (15, 30)
    callback = ProgressiveLearning(opts, 32, [])
    assert [callback.settings(e, 2).randaugment for e in range(2)] == [15, 30]
    top, mid = rand_augment(30), rand_augment(15)
    assert type(top) is v2.RandAugment and type(mid) is v2.RandAugment  # torchvision's own op
    assert (top.magnitude, top.num_magnitude_bins) == (30, 31)  # the last of 31 bins
    assert (mid.magnitude, mid.num_magnitude_bins) == (15, 31)
    # the option keeps the old mapping: the numbers are torchvision magnitudes as given
    old = ProgressiveOptions(randaugment=(5, 10), stages=2, randaugment_scale="torchvision")
    assert [s.randaugment for s in endpoints(old, 32)] == [5, 10]
    plan = progressive_schedule(ProgressiveOptions(randaugment_scale="torchvision"), 32, 8)
    assert [s.randaugment for s in plan[::2]] == [5, 8, 12, 15]


def test_past_tf_10_the_geometric_ops_grow_linearly_and_the_others_hold():
    ra = rand_augment(45)  # TF level 15, V2-S's last stage
    assert isinstance(ra, RandAugmentPastMax) and ra.num_magnitude_bins == 46
    h = w = 32
    ours, theirs = ra._AUGMENTATION_SPACE, v2.RandAugment._AUGMENTATION_SPACE
    for name, (fn, _) in theirs.items():
        tv = fn(31, h, w)
        got = ours[name][0](46, h, w)
        if tv is None:
            assert got is None
            continue
        assert torch.equal(got[:31], tv), name  # bins 0..30: torchvision's values exactly
    rotate, shear = ours["Rotate"][0](46, h, w), ours["ShearX"][0](46, h, w)
    assert float(rotate[45]) == pytest.approx(45.0)  # TF: (15 / 10) * 30 degrees
    assert float(shear[45]) == pytest.approx(0.45)  # TF: (15 / 10) * 0.3
    translate = ours["TranslateY"][0](46, h, w)
    assert float(translate[45]) == pytest.approx(1.5 * 150 / 331 * h)
    assert float(ours["Brightness"][0](46, h, w)[45]) == pytest.approx(0.9)  # held at the end
    assert int(ours["Posterize"][0](46, h, w)[45]) == 4
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    for _ in range(100):  # every op runs at this magnitude
        out = ra(image)
        assert out.shape == image.shape and out.dtype == torch.uint8


def test_the_train_transform_gets_the_mapped_magnitude():
    cfg = load_config(None, [*TINY, "data.image_size=16"]).data
    base = OpenWorldData.build(cfg, seed=0).view("labelled", train=True).base
    tf = ProgressiveTransform(base, 16, augment=True)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    for magnitude in (15, 30, 45):
        tf.set(16, magnitude)
        tf(image)
        ops = [t for t in tf._cache[(16, magnitude)].transforms if isinstance(t, v2.RandAugment)]
        assert [op.magnitude for op in ops] == [magnitude]


def test_scale_option_validation():
    with pytest.raises(UserError, match="progressive.randaugment_scale"):
        load_config(None, ["stages.supervised.progressive.randaugment_scale=pil"])
    cfg = load_config(None, ["stages.supervised.progressive.randaugment_scale=torchvision"])
    (name, opts), *_ = cfg.stage_list()
    assert name == "supervised" and opts.progressive.randaugment_scale == "torchvision"
