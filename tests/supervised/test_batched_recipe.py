"""The supervised stage's fast-recipe options: batched augmentation, batch size, schedule."""

import pytest

from uniframework.config import load_config
from uniframework.data.views import BatchView
from uniframework.errors import UserError
from uniframework.pipeline import RunContext, run
from uniframework.supervised.module import warmup_linear
from uniframework.training import extract

from ..conftest import TINY


def test_linear_schedule_warms_up_then_falls_to_zero():
    values = [warmup_linear(s, 4, 20) for s in range(22)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == 1.0 and values[12] == pytest.approx(0.5) and values[20:] == [0.0, 0.0]
    assert all(a >= b for a, b in zip(values[3:], values[4:]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["stages.supervised.cutout=8"], "set batch_augment: true"),
        (["stages.supervised.translate=2"], "set batch_augment: true"),
        (
            ["stages.supervised.batch_augment=true", "stages.supervised.progressive=true"],
            "does not combine",
        ),
        (["stages.supervised.schedule=step"], "schedule"),
        (["stages.supervised.batch_size=0"], "batch_size"),
    ],
)
def test_bad_combinations_stop_with_the_key(extra, message):
    with pytest.raises(UserError, match=message):
        load_config("configs/digits.yaml", extra)


def test_defaults_keep_the_per_image_path():
    opts = load_config("configs/digits.yaml").stage_list()[0][1]
    assert (opts.batch_augment, opts.cutout, opts.translate, opts.schedule) == (
        False,
        0,
        None,
        "cosine",
    )
    assert opts.batch_size is None and opts.channels_last is False


def test_batched_recipe_runs_with_the_pool(tmp_path, monkeypatch):
    """batch_augment + cutout + linear schedule + its own batch size + channels_last, with energy
    margins (a pool loader beside the labelled one): both train loaders read BatchViews of that
    batch size, and the saved classifier reloads and gives the reported accuracy."""
    from uniframework.supervised import stage as stage_module

    loaders = []
    real_fit = stage_module.fit

    def spy(trainer, module, train, val):
        loaders.append((train, val))
        return real_fit(trainer, module, train, val)

    monkeypatch.setattr(stage_module, "fit", spy)
    cfg = load_config(
        "configs/demo.yaml",
        [
            *TINY,
            "data.image_size=16",
            "model.backbone=resnet9_half",
            "stages.supervised.optimizer=sgd",
            "stages.supervised.lr=0.05",
            "stages.supervised.batch_augment=true",
            "stages.supervised.cutout=4",
            "stages.supervised.translate=2",
            "stages.supervised.schedule=linear",
            "stages.supervised.batch_size=16",
            "stages.supervised.channels_last=true",
        ],
    )
    cfg = cfg.model_copy(update={"stages": cfg.stages[:1]})
    assert cfg.stage_list()[0][1].energy_margins is not None  # the demo's pool path
    metrics = run(cfg, tmp_path)
    assert 0.0 <= metrics["supervised.known_acc"] <= 1.0 and metrics["supervised.epochs"] == 3
    ((train, val),) = loaders
    for name in ("labelled", "pool"):
        assert isinstance(train[name].dataset, BatchView) and train[name].batch_size == 16
        assert train[name].dataset.augment.cutout == 4 and train[name].dataset.augment.pad == 2
    assert isinstance(val.dataset, BatchView) and val.dataset.augment is None
    ctx = RunContext(cfg, tmp_path)
    model, _ = ctx.load_classifier("supervised")
    test = extract(model, ctx.data.loader(ctx.data.view("test_known")))
    acc = (test["logits"][:, :5].argmax(1) == test["labels"]).float().mean().item()
    assert acc == pytest.approx(metrics["supervised.known_acc"], abs=1e-6)
