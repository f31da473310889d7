"""Progressive learning (EfficientNetV2 §4): the schedule, its pieces, and a tiny run on digits."""

import csv

import pytest
import torch
from torch.utils.data import DataLoader

from uniframework.config import load_config
from uniframework.data.views import OpenWorldData
from uniframework.errors import UserError
from uniframework.models.efficientnet import efficientnet
from uniframework.pipeline import run
from uniframework.supervised.module import SupervisedOptions
from uniframework.supervised.progressive import (
    ProgressiveOptions,
    ProgressiveTransform,
    StageSettings,
    mixup,
    progressive_schedule,
    progressive_stage,
    set_dropout,
    stage_settings,
)

from ..conftest import TINY


def test_stage_settings_interpolate_linearly_as_in_algorithm_1():
    # the paper's V2-S row: 128 -> 300 px, RandAugment 5 -> 15, dropout 0.1 -> 0.3, 4 stages
    start, end = StageSettings(128, 5, 0.0, 0.1), StageSettings(300, 15, 0.4, 0.3)
    got = [stage_settings(i, 4, start, end) for i in range(4)]
    assert [s.image_size for s in got] == [128, 185, 243, 300]  # 128 + 172·i/3
    assert [s.randaugment for s in got] == [5, 8, 12, 15]
    assert [s.mixup for s in got] == pytest.approx([0.0, 0.4 / 3, 0.8 / 3, 0.4])
    assert [s.dropout for s in got] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])


def test_epochs_split_into_equal_stages():
    assert [progressive_stage(e, 8, 4)[0] for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [progressive_stage(e, 6, 4)[0] for e in range(6)] == [0, 0, 1, 2, 2, 3]
    # fewer epochs than stages: one stage per epoch, still ending at the final settings
    assert [progressive_stage(e, 2, 4) for e in range(2)] == [(0, 2), (1, 2)]


def test_schedule_at_every_stage_with_the_defaults():
    plan = progressive_schedule(ProgressiveOptions(), final_size=32, total_epochs=8)
    assert [s.image_size for s in plan] == [16, 16, 21, 21, 27, 27, 32, 32]
    # RandAugment 5 -> 15 on the paper's TF scale = torchvision magnitudes 3 x linspace(5, 15, 4)
    assert [s.randaugment for s in plan[::2]] == [15, 25, 35, 45]
    assert [s.dropout for s in plan[::2]] == pytest.approx([0.1, 0.1667, 0.2333, 0.3], abs=1e-3)
    assert all(s.mixup == 0.0 for s in plan)  # V2-S: no mixup
    with pytest.raises(UserError, match="progressive.start_size"):
        progressive_schedule(ProgressiveOptions(start_size=64), final_size=32, total_epochs=4)


def test_options_on_off_and_validation():
    assert SupervisedOptions().progressive is None  # off by default
    assert SupervisedOptions(progressive=True).progressive == ProgressiveOptions()
    assert SupervisedOptions(progressive=False).progressive is None
    with pytest.raises(UserError, match="progressive.randaugment"):
        load_config(None, ["stages.supervised.progressive.randaugment=[5, 40]"])
    with pytest.raises(UserError, match="progressive.stages"):
        load_config(None, ["stages.supervised.progressive.stages=1"])


def test_mixup_mixes_pairs_and_keeps_the_larger_share():
    torch.manual_seed(0)
    x = torch.eye(6)  # row i = one-hot i, so a mixed row shows both partners
    y = torch.arange(6)
    xm, y2, lam = mixup(x, y, alpha=0.4)
    assert 0.5 <= lam <= 1.0
    expected = lam * x + (1 - lam) * x[y2]  # y2 = y[perm], and here x[y[perm]] = x[perm]
    assert torch.allclose(xm, expected)


def test_set_dropout_on_timm_backbones():
    import timm

    eff = efficientnet(0, small_input=True)
    assert set_dropout(eff, 0.3) and eff.drop_rate == 0.3
    vit = timm.create_model("test_vit", num_classes=0)
    assert set_dropout(vit, 0.25) and vit.head_drop.p == 0.25
    assert not set_dropout(torch.nn.Linear(2, 2), 0.1)


def test_transform_size_reaches_worker_processes():
    cfg = load_config(None, [*TINY, "data.image_size=16"]).data
    data = OpenWorldData.build(cfg, seed=0)
    view = data.view("labelled", train=True)
    view.transform = tf = ProgressiveTransform(view.base, 16, augment=True)
    loader = DataLoader(view, batch_size=4, num_workers=1, persistent_workers=True)
    tf.set(8, 5)
    assert next(iter(loader))[0].shape[-1] == 8
    tf.set(12, 15)  # the same persistent worker sees the change at the next epoch
    assert next(iter(loader))[0].shape[-1] == 12


def test_tiny_progressive_run_changes_image_size_between_epochs(tmp_path):
    cfg = load_config(
        "configs/digits.yaml",
        [
            *TINY,
            "data.image_size=16",
            "model.backbone=efficientnet_phi",
            "model.timm_kwargs={phi: 0}",
            "trainer.max_epochs=4",
            "trainer.limit_train_batches=4",
            "stages.supervised.progressive.start_size=8",
            "stages.supervised.progressive.mixup=[0.0, 0.2]",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert metrics["supervised.epochs"] == 4 and 0 <= metrics["supervised.known_acc"] <= 1
    with open(tmp_path / "logs/supervised/csv/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_image_px")]
    seen = [float(r["train_image_px"]) for r in rows]  # measured on the batches themselves
    drops = [float(r["progressive_dropout"]) for r in rows]
    assert seen == [8, 11, 13, 16]  # 8 -> 16 px over 4 stages
    assert drops == pytest.approx([0.1, 0.1667, 0.2333, 0.3], abs=1e-3)
