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
        (["data.cutout=8"], "set data.batched: true"),
        (["data.translate=2"], "set data.batched: true"),
        (["stages.supervised.schedule=step"], "schedule"),
        (["stages.supervised.batch_size=0"], "batch_size"),
    ],
)
def test_bad_combinations_stop_with_the_key(extra, message):
    with pytest.raises(UserError, match=message):
        load_config("configs/digits.yaml", extra)


def test_defaults_keep_the_per_image_path():
    cfg = load_config("configs/digits.yaml")
    assert (cfg.data.batched, cfg.data.cutout, cfg.data.translate) == (False, 0, None)
    opts = cfg.stage_list()[0][1]
    assert opts.schedule == "cosine" and opts.batch_size is None
    assert cfg.trainer.channels_last is False


def test_progressive_learning_refuses_the_batched_path(tmp_path):
    cfg = load_config(
        "configs/digits.yaml", [*TINY, "data.batched=true", "stages.supervised.progressive=true"]
    )
    with pytest.raises(UserError, match="does not combine with data.batched"):
        run(cfg, tmp_path)


def test_batched_recipe_runs_with_the_pool(tmp_path, monkeypatch):
    """data.batched + cutout + linear schedule + its own batch size + channels_last, with energy
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
        "configs/demo-novel.yaml",
        [
            *TINY,
            "data.image_size=16",
            "model.backbone=resnet9_half",
            "stages.supervised.optimizer=sgd",
            "stages.supervised.lr=0.05",
            "data.batched=true",
            "data.cutout=4",
            "data.translate=2",
            "stages.supervised.schedule=linear",
            "stages.supervised.batch_size=16",
            "trainer.channels_last=true",
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


def test_the_whole_loop_runs_on_the_batched_path(tmp_path, monkeypatch):
    """data.batched reaches every stage: discover trains on batched two-view pairs, incremental
    on batched subsets, and the loop ends with its usual metrics."""
    from uniframework.discover import stage as discover_stage
    from uniframework.incremental import stage as incremental_stage

    seen = []
    for module in (discover_stage, incremental_stage):
        real = module.fit

        def spy(trainer, mod, train, val, real=real):
            loaders = train.values() if isinstance(train, dict) else [train]
            seen.extend(type(dl.dataset).__name__ for dl in loaders)
            return real(trainer, mod, train, val)

        monkeypatch.setattr(module, "fit", spy)
    cfg = load_config(
        "configs/demo-novel.yaml",
        [
            *TINY,
            "data.batched=true",
            "stages.discover.max_epochs=1",
            "stages.incremental.max_epochs=1",
        ],
    )
    metrics = run(cfg, tmp_path)
    assert {"BatchTwoViews", "BatchView"} <= set(seen) and set(seen) <= {
        "BatchTwoViews",
        "BatchView",
    }
    for key in ("discover.novel_acc", "incremental.all_acc", "openset.auroc"):
        assert 0.0 <= metrics[key] <= 1.0
