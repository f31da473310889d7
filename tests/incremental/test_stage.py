"""The `incremental` stage end to end on tiny seeded digits (8 px, 60 images per class)."""

import math

import numpy as np
import pytest
import torch

from uniframework.config import load_config
from uniframework.discover.labels import save_labels
from uniframework.errors import UserError
from uniframework.incremental.detector import refit_detector
from uniframework.incremental.metrics import UNMATCHED
from uniframework.incremental.tasks import plan_from_discover
from uniframework.io import load_weights, read_json, write_json
from uniframework.openset.detector import REFIT_DIR, Detector
from uniframework.openset.stage import OpensetOptions, _scorer
from uniframework.pipeline import RunContext, run
from uniframework.training import extract

from ..conftest import TINY

# 2 known digits, then 4 tasks of 2 novel digits each
FIVE_TASKS = [*TINY, "data.num_known=2", "data.num_tasks=5"]
KEYS = ["avg_acc", "last_acc", "forgetting", "all_acc", "old_acc", "new_acc"]


def _stage(opts: str) -> str:
    return f"stages=[{{incremental: {{{opts}}}}}]"


def test_icarl_forgets_less_than_finetune_and_resumes(tmp_path):
    cfg = load_config(
        None,
        [
            *FIVE_TASKS,
            _stage("learner: icarl, compare: [finetune], memory: 40, max_epochs: 8, lr: 0.005"),
        ],
    )
    m = run(cfg, tmp_path)
    # fine-tuning on the new classes alone wipes out the old ones; iCaRL keeps them
    assert m["incremental.finetune.forgetting"] > m["incremental.forgetting"] + 0.3
    assert m["incremental.finetune.forgetting"] > m["incremental.nme_forgetting"] + 0.5
    assert m["incremental.avg_acc"] > m["incremental.finetune.avg_acc"] + 0.25
    assert m["incremental.nme_avg_acc"] > m["incremental.finetune.avg_acc"] + 0.25
    assert m["incremental.nme_old_acc"] > m["incremental.finetune.old_acc"] + 0.25
    # the memory: 40 exemplars over 10 classes, 4 each, no image copies
    mem = read_json(tmp_path / "incremental/memory.json")
    assert {len(v) for v in mem["classes"].values()} == {4} and len(mem["classes"]) == 10
    state, meta = load_weights(tmp_path / "checkpoints/incremental.safetensors")
    assert state["head.weight"].shape[0] == 10 and meta["learner"] == "icarl"
    for fig in ("accuracy.png", "matrix.png"):
        assert (tmp_path / "incremental" / fig).stat().st_size > 1000
    # a run cut off after task 3: the rerun reloads tasks 0-3 and gives the same figures
    write_json(tmp_path / "state.json", {"done": [], "seconds": {}})
    (tmp_path / "checkpoints/incremental/icarl/task4.json").unlink()
    again = run(cfg, tmp_path)
    for key in KEYS:
        assert math.isclose(again[f"incremental.{key}"], m[f"incremental.{key}"], abs_tol=1e-6)


def _discovered(ctx: RunContext) -> dict:
    """A hand-written discover result: 4 clusters over the pool of novel digits 2..7.
    Clusters 2, 3, 4 are digits 5, 2, 7; cluster 5 (digit 3) matched no class; digits
    4, 6, 8, 9 got no cluster."""
    pool = ctx.data.split.unlabelled
    true = ctx.data.pool_truth(pool)  # the pool's hidden classes (train.targets hides them)
    cluster_of = {5: 2, 2: 3, 7: 4, 3: 5}
    keep = np.isin(true, list(cluster_of))
    return {
        "num_known": 2,
        "num_novel": 4,
        "index": pool[keep].tolist(),
        "label": [cluster_of[int(t)] for t in true[keep]],
        "mapping": {"2": 5, "3": 2, "4": 7, "5": None},
        "class_names": ["c2", "c3", "c4", "c5"],
    }


def test_source_discover_trains_on_pseudo_labels(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "data.num_known=2",
            "data.num_tasks=3",
            _stage("source: discover, learner: replay, memory: 60, max_epochs: 4, lr: 0.005"),
        ],
    )
    with pytest.raises(UserError, match="discovered.json.*source=split"):
        run(cfg, tmp_path)
    ctx = RunContext(cfg, tmp_path)
    write_json(tmp_path / "discover/discovered.json", _discovered(ctx))
    plan = plan_from_discover(ctx.data, tmp_path / "discover/discovered.json")
    assert plan.tasks == [[0, 1], [2, 3], [4, 5]]
    true = ctx.data.split.remap(ctx.data.test.targets[ctx.data.split.test])
    assert (plan.test_labels[true == 5] == 2).all() and (plan.test_labels[true == 2] == 3).all()
    assert (plan.test_labels[np.isin(true, [3, 4, 6, 8, 9])] == UNMATCHED).all()
    m = run(cfg, tmp_path)
    assert m["incremental.num_classes"] == 6 and m["incremental.num_tasks"] == 3
    # test images of the 5 undiscovered digits (3 has a cluster, but no mapping) are wrong
    novel = true >= 2
    assert m["incremental.new_acc"] <= np.isin(true[novel], [5, 2, 7]).mean() + 1e-6
    assert m["incremental.new_acc"] > 0.1  # the matched clusters are learned
    _, meta = load_weights(tmp_path / "checkpoints/incremental.safetensors")
    assert meta["num_classes"] == 6 and meta["model_class_names"][2:] == ["c2", "c3", "c4", "c5"]
    assert not (tmp_path / REFIT_DIR).exists()  # no openset stage: no detector to refit
    # with one, `detector: openset`: energy + Weibull fitted again on the final classifier over
    # its 6 classes, its auto-labelled unknowns the `unknown_fraction` of the pool images no
    # class learned (digits 4, 6, 8, 9) that the open-set stage's rule picks
    with_openset = cfg.model_copy(update={"stages": [{"openset": {}}, *cfg.stages]})
    ctx = RunContext(with_openset, tmp_path)
    model, _ = ctx.load_classifier("incremental")
    m = refit_detector(ctx, model, plan, "openset")
    detector = Detector.load(tmp_path / REFIT_DIR)
    assert detector.name == "energy_weibull" and detector.classifier == "incremental"
    assert detector.num_known == detector.scorer.num_known == 6
    rest = np.setdiff1d(ctx.data.split.unlabelled, np.concatenate(plan.train_index[1:]))
    assert set(np.unique(ctx.data.pool_truth(rest))) == {4, 6, 8, 9}
    assert m["detector_auto_unknowns"] == max(3, round(0.3 * len(rest)))
    assert 0 <= m["detector_unknown_caught"] <= 1 and 0 <= m["detector_known_kept"] <= 1
    # `detector: auto`: the kind the open-set stage picked (its detector.json), fitted again
    auto = cfg.model_copy(update={"stages": [{"openset": {"detector": "auto"}}, *cfg.stages]})
    f = torch.randn(20, model.feature_dim)
    knn = _scorer("knn", OpensetOptions(knn_k=3), 2).fit(f, None, torch.arange(20) % 2)
    Detector.fit("knn", knn, 2, f, torch.zeros(20, 2)).save(tmp_path / "openset")
    refit_detector(RunContext(auto, tmp_path), model, plan, "openset")
    assert Detector.load(tmp_path / REFIT_DIR).name == "knn"
    (tmp_path / "openset" / "detector.json").unlink()  # nothing says which kind was picked
    with pytest.raises(UserError, match="no detector.json.*--restart-from openset"):
        refit_detector(RunContext(auto, tmp_path), model, plan, "openset")
    # the default, Mahalanobis on the final classifier's features: 95% of the held-out knowns kept
    # (its threshold), and uniform noise, far from every learned class, called unknown
    m = refit_detector(ctx, model, plan)
    detector = Detector.load(tmp_path / REFIT_DIR)
    assert detector.name == "mahalanobis" and "detector_auto_unknowns" not in m
    view = ctx.data.view("val")
    val = extract(model, ctx.data.loader(view))
    kept = ~detector.predict_unknown(val["features"], val["logits"])
    assert kept.float().mean() >= 0.94  # threshold: 0.95 quantile of val + held-out new images
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (view.base.mean, view.base.std))
    size = ctx.cfg.data.image_size
    noise = (torch.rand(64, 3, size, size) - mean) / std  # uniform pixels, normalised
    with torch.no_grad():
        features = model.forward_features(noise)
        flagged = detector.predict_unknown(features, model.forward_head(features))
    assert flagged.float().mean() >= 0.8


def test_source_discover_plans_the_named_classes(tmp_path):
    """With discover/labels.json: clusters 2 and 4 (digits 5, 7) merged as "fivish", cluster 3
    (digit 2) named "two-ish", cluster 5 rejected: 2 classes, its images left out."""
    cfg = load_config(None, [*TINY, "data.num_known=2", "data.num_tasks=2"])
    ctx = RunContext(cfg, tmp_path)
    disc = _discovered(ctx)
    write_json(tmp_path / "discover/discovered.json", disc)
    labels = {
        "classes": [{"name": "fivish", "clusters": [2, 4]}, {"name": "two-ish", "clusters": [3]}],
        "rejected": [5],
    }
    save_labels(tmp_path / "discover", labels, ctx.data.class_names[:2])
    plan = plan_from_discover(ctx.data, tmp_path / "discover/discovered.json")
    assert plan.tasks == [[0, 1], [2, 3]] and plan.class_names[2:] == ["fivish", "two-ish"]
    assert plan.labels["merged_clusters"] == 1 and plan.labels["rejected_clusters"] == 1
    new = dict(zip(disc["index"], disc["label"], strict=True))
    expect = {i: {2: 2, 4: 2, 3: 3}[c] for i, c in new.items() if c != 5}
    assert dict(zip(plan.train_index[1].tolist(), plan.train_labels[1].tolist())) == expect
    true = ctx.data.split.remap(ctx.data.test.targets[ctx.data.split.test])
    assert (plan.test_labels[np.isin(true, [5, 7])] == 2).all()  # merged: right for either
    assert (plan.test_labels[true == 2] == 3).all()
    assert (plan.test_labels[np.isin(true, [3, 4, 6, 8, 9])] == UNMATCHED).all()


def test_supervised_then_incremental_writes_every_metric(tmp_path):
    cfg = load_config(
        None,
        [
            *TINY,
            "data.num_known=4",
            "data.num_tasks=3",
            "stages=[{supervised: {unknown_class: true, lr: 0.003}}, "
            "{incremental: {learner: ore, compare: [lwf, replay], memory: 50, max_epochs: 2}}]",
        ],
    )
    m = run(cfg, tmp_path)
    per_task = [f"task{t}_acc" for t in range(3)]
    for prefix in ("incremental.", "incremental.replay."):  # learners with a memory: + NME
        for key in KEYS + per_task:
            assert math.isfinite(m[prefix + key]) and math.isfinite(m[prefix + "nme_" + key])
    for key in KEYS + per_task:
        assert math.isfinite(m["incremental.lwf." + key])
    assert "incremental.lwf.nme_avg_acc" not in m  # LwF keeps no memory (the paper's)
    # task 0 is the supervised classifier with its "unknown" output dropped
    assert math.isclose(m["incremental.task0_acc"], m["supervised.known_acc"], abs_tol=1e-6)
    assert m["incremental.memory_size"] == 50 and m["incremental.num_classes"] == 10
    assert (tmp_path / "checkpoints/incremental/ore/task2_balanced/last.ckpt").is_file()
    again = run(cfg, tmp_path)  # a finished stage is skipped
    assert again == m
    assert not (tmp_path / REFIT_DIR).exists()  # no openset stage: no detector to refit


def test_bad_options_are_user_errors(tmp_path):
    cfg = load_config(None, [*FIVE_TASKS, _stage("learner: icarl, memory: 5")])
    with pytest.raises(UserError, match=r"stages\.incremental\.memory = 5.*>= 10"):
        run(cfg, tmp_path)
    with pytest.raises(UserError, match="compare"):
        load_config(None, [*FIVE_TASKS, _stage("learner: icarl, compare: [icarl]")])
    with pytest.raises(UserError, match="num_tasks >= 2"):
        run(load_config(None, [*TINY, "data.num_known=2", _stage("")]), tmp_path / "b")
