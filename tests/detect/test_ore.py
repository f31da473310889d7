"""ORE's detection parts: auto-labelling, clustering, energy identifier, exemplars."""

from __future__ import annotations

import pytest
import torch

from uniframework.detect.ore import (
    ContrastiveClustering,
    apply_identifier,
    auto_label_unknowns,
    drop_known_under_unknown,
    fit_identifier,
    select_exemplars,
)

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
PROPOSALS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # the GT itself (IoU 1)
        [1.0, 1.0, 11.0, 11.0],  # overlaps the GT (IoU ~0.68)
        [5.0, 0.0, 15.0, 10.0],  # overlaps it by a third (IoU 0.33)
        [30.0, 30.0, 40.0, 40.0],  # free
        [50.0, 50.0, 60.0, 60.0],  # free
        [70.0, 70.0, 80.0, 80.0],  # free
    ]
)
OBJECTNESS = torch.tensor([0.99, 0.95, 0.9, 0.3, 0.8, 0.1])


def test_auto_label_picks_top_k_non_overlapping():
    idx = auto_label_unknowns(PROPOSALS, OBJECTNESS, GT, k=2, iou_thresh=0.3)
    # the three most objectness-like proposals overlap the GT: skipped, whatever their score
    assert idx.tolist() == [4, 3]


def test_auto_label_threshold_and_limits():
    # a looser threshold lets the one-third overlap in, as the top free proposal
    assert auto_label_unknowns(PROPOSALS, OBJECTNESS, GT, 1, iou_thresh=0.5).tolist() == [2]
    # k larger than the free proposals: all of them, by objectness
    assert auto_label_unknowns(PROPOSALS, OBJECTNESS, GT, 10, 0.3).tolist() == [4, 3, 5]
    # no GT in the image: the top-k overall
    assert auto_label_unknowns(PROPOSALS, OBJECTNESS, GT[:0], 2, 0.3).tolist() == [0, 1]
    assert len(auto_label_unknowns(PROPOSALS, OBJECTNESS, GT, 0, 0.3)) == 0


def test_clustering_off_until_live_then_pulls_to_prototypes():
    cc = ContrastiveClustering(num_classes=3, dim=4, store_size=5, margin=10.0, every=1)
    f = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, -1, 2])  # -1: background, ignored
    assert float(cc.step(f, y, live=False).detach()) == 0.0
    assert not cc.ready.any()  # no prototypes before it is live
    loss = cc.step(f, y, live=True)
    assert cc.ready.tolist() == [True, True, True]
    # a first prototype is its class's store mean (two steps of the same features)
    assert torch.allclose(cc.prototypes[0], f[:2].detach().mean(0), atol=1e-6)
    loss.backward()
    assert f.grad is not None and float(f.grad[4].abs().sum()) == 0.0  # background untouched


def test_energy_identifier_relabels_and_owod_drops():
    gen = torch.Generator().manual_seed(0)
    # known proposals: one large known logit (low energy); unknowns: flat small logits
    known = torch.randn(200, 6, generator=gen)
    known[torch.arange(200), 1 + torch.arange(200) % 3] += 8.0
    unk = torch.randn(200, 6, generator=gen) * 0.3
    outlier = torch.full((1, 6), -30.0)  # one far-out unknown: left out of the fit
    logits = torch.cat([known, unk, outlier])
    labels = torch.cat([1 + torch.arange(200) % 3, torch.full((201,), 5)])  # 5 = C + 1
    scorer = fit_identifier(logits, labels, num_classes=4, num_seen=3)
    assert scorer.identifier.unknown.shape > 1.0  # not dragged to a degenerate fit
    dets = {
        "boxes": torch.zeros(3, 4),
        "labels": torch.tensor([2, 1, 5]),  # known, known, unknown
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "logits": torch.stack([known[1], unk[0], known[2]]),
    }
    out = apply_identifier(dets, scorer, num_classes=4, num_seen=3, keep_unknown=False)
    # OWOD's rule: row 0 stays known; row 1 (flat logits) becomes unknown; row 2, an "unknown"
    # detection the known density claims, is dropped
    assert out["labels"].tolist() == [2, 5]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])
    # ours (the default): the same relabelling, the unknown head's detection kept
    out = apply_identifier(dets, scorer, num_classes=4, num_seen=3)
    assert out["labels"].tolist() == [2, 5, 5]


def test_exemplars_are_class_balanced_herding():
    gen = torch.Generator().manual_seed(0)
    feats = {
        0: [(i, torch.randn(8, generator=gen)) for i in range(10)],
        1: [(100 + i, torch.randn(8, generator=gen)) for i in range(3)],
    }
    chosen = select_exemplars(feats, per_class=4)
    assert len(chosen[0]) == 4 and len(chosen[1]) == 3  # capped by what a class has
    assert set(chosen[0]) <= set(range(10)) and set(chosen[1]) == {100, 101, 102}
    # herding's first pick is the image nearest the class mean (normalised features)
    f = torch.nn.functional.normalize(torch.stack([x for _, x in feats[0]]), dim=1)
    assert chosen[0][0] == int((f - f.mean(0)).norm(dim=1).argmin())


def test_a_degenerate_unknown_fit_falls_back_to_the_known_weibull():
    from scipy.stats import weibull_min

    # one known class: -energy equals its logit, so the Weibulls fit the logits themselves
    known = torch.from_numpy(weibull_min.rvs(3.0, loc=5.0, scale=2.0, size=300, random_state=0))
    unknown = torch.from_numpy(weibull_min.rvs(0.5, loc=0.0, scale=1.0, size=300, random_state=1))
    x = torch.cat([known, unknown]).float()
    logits = torch.stack([torch.zeros_like(x), x, torch.zeros_like(x)], 1)  # bg, class 1, unk
    labels = torch.cat([torch.ones(300), torch.full((300,), 2)]).long()
    scorer = fit_identifier(logits, labels, 1, 1, temperature=1.0, degenerate="known_only")
    assert scorer.identifier.unknown is None  # shape < 1: known-only identifier kept
    ident = scorer.identifier
    assert ident.known is not None and ident.known.shape > 1
    # a known-looking logit stays known, one far below every known stays unknown
    decide = scorer.predict_unknown(torch.tensor([[7.0], [0.5]]))  # the known logits
    assert decide.tolist() == [False, True]

    # the default: the unknowns fitted again with the shape held >= 1, within one data range
    scorer = fit_identifier(logits, labels, 1, 1, temperature=1.0)
    unk = scorer.identifier.unknown
    assert unk is not None and unk.shape >= 1.0
    u = x[300:].double()
    assert float(u.min() - (u.max() - u.min())) - 1e-9 <= unk.loc <= float(u.min()) + 1e-9
    # the fitted density is the better one on its own samples: most of them are called unknown
    assert scorer.predict_unknown(logits[300:, 1:2]).float().mean() > 0.8
    assert scorer.predict_unknown(logits[:300, 1:2]).float().mean() < 0.1
    again = fit_identifier(logits, labels, 1, 1, temperature=1.0).identifier.unknown
    assert again == unk  # seeded: the same fit every time


# --- where the defaults follow ORE / OWOD and where they do not


def test_auto_label_default_is_ours_and_owod_background_iou_an_option():
    import inspect

    from uniframework.detect.model import OpenWorldDetector, OpenWorldRoIHeads
    from uniframework.detect.stage import DetectOptions, model_kwargs

    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 6.0],  # inside the GT, IoU 0.6: the matcher's foreground
            [0.0, 0.0, 10.0, 4.0],  # inside the GT, IoU 0.4: background to OWOD's matcher
            [30.0, 30.0, 40.0, 40.0],  # free
        ]
    )
    objectness = torch.tensor([0.9, 0.8, 0.1])
    # OWOD takes what its RoI matcher (IOU_THRESHOLDS [0.5]) labels background: IoU < 0.5
    assert auto_label_unknowns(proposals, objectness, gt, iou_thresh=0.5).tolist() == [1]
    assert auto_label_unknowns(proposals, objectness, gt, k=3, iou_thresh=0.5).tolist() == [1, 2]
    # our default 0.3 (measured): the IoU-0.4 near-miss box is no candidate
    assert auto_label_unknowns(proposals, objectness, gt).tolist() == [2]
    assert DetectOptions().unknown_iou == 0.3
    assert DetectOptions(unknown_iou=0.5).unknown_iou == 0.5
    assert model_kwargs(DetectOptions(), 8)["unknown_iou"] == 0.3
    for cls in (OpenWorldDetector, OpenWorldRoIHeads):
        assert inspect.signature(cls).parameters["unknown_iou"].default == 0.3


def test_clustering_defaults_pinned():
    from uniframework.detect.stage import DetectOptions

    o = DetectOptions()
    assert o.prototype_every is None and o.prototype_every_fraction == 3000 / 18000  # OWOD
    assert o.contrastive_features == "raw" and o.contrastive_margin is None  # paper: raw, 10
    cc = ContrastiveClustering(num_classes=2, dim=4)
    assert cc.margin == 10.0 and not cc.normalise


def _changes(cc: ContrastiveClustering, steps: int) -> list[int]:
    """Steps (1-based) of one training loop at which the prototypes changed."""
    changed = []
    for step in range(1, steps + 1):
        before = cc.prototypes.clone()
        cc.step(torch.randn(6, 4), torch.arange(6) % 2, live=True)
        if not torch.equal(before, cc.prototypes):
            changed.append(step)
    return changed


def test_prototype_interval_is_a_fraction_of_each_loop_by_default():
    cc = ContrastiveClustering(num_classes=2, dim=4)
    with pytest.raises(RuntimeError, match="start_loop"):
        cc.step(torch.randn(6, 4), torch.arange(6) % 2, live=True)
    cc = ContrastiveClustering(num_classes=2, dim=4)
    cc.start_loop(600)
    # OWOD's task 1: 18,000 iterations, an update every 3,000; here 600 steps, every 100
    assert cc.interval == 100 and _changes(cc, 600) == [1, 100, 200, 300, 400, 500, 600]
    cc.start_loop(60)  # the exemplar fine-tune: its own, shorter loop
    assert cc.interval == 10
    fixed = ContrastiveClustering(num_classes=2, dim=4, every=10)
    fixed.start_loop(600)  # an absolute interval ignores the loop's length
    assert fixed.interval == 10 and _changes(fixed, 30) == [1, 10, 20, 30]


def test_normalised_clustering_loss_ignores_feature_scale():
    f = torch.randn(6, 4)
    y = torch.tensor([0, 0, 1, 1, 2, -1])
    losses = {}
    for normalise in (False, True):
        for scale in (1.0, 100.0):
            margin = 1.0 if normalise else 10.0
            cc = ContrastiveClustering(3, 4, margin=margin, every=1, normalise=normalise)
            cc.start_loop(10)
            cc.step(scale * f, y, live=True)  # prototypes from the scaled features too
            losses[normalise, scale] = cc.step(scale * f, y, live=True).item()
    assert losses[True, 100.0] == pytest.approx(losses[True, 1.0], rel=1e-5)
    assert losses[False, 100.0] > 2 * losses[False, 1.0]


def test_without_an_unknown_fit_unknown_detections_are_kept():
    from scipy.stats import weibull_min

    # known-only identifier (no unknown fit): one known class, -energy = its logit
    known = torch.from_numpy(weibull_min.rvs(3.0, loc=5.0, scale=2.0, size=300, random_state=0))
    logits = torch.stack([torch.zeros_like(known), known, torch.zeros_like(known)], 1).float()
    scorer = fit_identifier(logits, torch.ones(300).long(), 1, 1, temperature=1.0)
    assert scorer.identifier.unknown is None
    dets = {
        "boxes": torch.zeros(3, 4),
        "labels": torch.tensor([1, 2, 1]),  # known, unknown (the head's own), known
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "logits": torch.tensor([[0.0, 7.0, 0.0], [0.0, 7.0, 0.0], [0.0, -5.0, 0.0]]),
    }
    out = apply_identifier(dets, scorer, num_classes=1, num_seen=1)
    # the unknown head's detection stays although the known CDF does not flag it; the known
    # detection with an improbably low energy becomes unknown
    assert out["labels"].tolist() == [1, 2, 2]
    # the earlier behaviour (keep_unknown=False): the unflagged unknown detection is dropped
    out = apply_identifier(dets, scorer, num_classes=1, num_seen=1, keep_unknown=False)
    assert out["labels"].tolist() == [1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.7])


class _FixedDetector(torch.nn.Module):
    """`detect` returns the same detections for every image, in model labels; it records the
    `num_seen` it was called with."""

    def __init__(self, dets):
        super().__init__()
        self.dets, self.num_seen, self.called_with = dets, 5, []

    def detect(self, images):
        self.called_with.append(self.num_seen)
        return [dict(self.dets) for _ in images]


def test_pseudo_labels_add_confident_free_boxes_of_earlier_classes():
    from uniframework.detect.datasets import DetectionSet
    from uniframework.detect.engine import pseudo_label_previous

    dets = {
        "boxes": torch.tensor(
            [
                [0.0, 0.0, 10.0, 10.0],  # class 1, confident, free -> added
                [20.0, 20.0, 30.0, 30.0],  # class 2, below the score -> not
                [40.0, 40.0, 50.0, 50.0],  # class 4 (a new class) -> not
                [61.0, 61.0, 71.0, 71.0],  # class 2 on the annotated box -> not
                [80.0, 80.0, 90.0, 90.0],  # unknown (6) -> not
            ]
        ),
        "labels": torch.tensor([1, 2, 4, 2, 6]),
        "scores": torch.tensor([0.9, 0.3, 0.95, 0.9, 0.99]),
    }
    model = _FixedDetector(dets)
    target = {"boxes": torch.tensor([[60.0, 60.0, 70.0, 70.0]]), "labels": torch.tensor([4])}
    data = DetectionSet([torch.zeros(3, 96, 96, dtype=torch.uint8)] * 2, [target] * 2, ["a"])
    out, added = pseudo_label_previous(model, data, 3, 0.5, torch.device("cpu"), 2)
    assert added == 2 and model.called_with == [3] and model.num_seen == 5
    for t in out.targets:
        assert t["labels"].tolist() == [4, 1]
        assert t["boxes"][1].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert data.targets[0]["labels"].tolist() == [4]  # the input set is left as it was


def test_an_unknown_detection_drops_the_weaker_known_ones_it_covers():
    """`drop_known_under_unknown` by hand: label 9 = unknown. Box A is called unknown (0.8)
    and, from nearby proposals, class 2 (0.3, IoU 0.81 with A) and class 3 (0.9, stronger);
    box B is class 1 only; box C a class-2 box that overlaps A at IoU 0.14."""
    a, near_a, b, c = [0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [5, 5, 15, 15]
    dets = {
        "boxes": torch.tensor([a, near_a, a, b, c], dtype=torch.float),
        "labels": torch.tensor([9, 2, 3, 1, 2]),
        "scores": torch.tensor([0.8, 0.3, 0.9, 0.7, 0.2]),
    }
    out = drop_known_under_unknown(dets, unknown_label=9, iou=0.5)
    # the weaker known reading of A goes; the stronger one, B and C (IoU 0.14) stay
    assert out["labels"].tolist() == [9, 3, 1, 2]
    assert out["scores"].tolist() == pytest.approx([0.8, 0.9, 0.7, 0.2])
    # a lower IoU reaches C too; no unknown detection, or only unknown ones: unchanged
    assert drop_known_under_unknown(dets, 9, 0.1)["labels"].tolist() == [9, 3, 1]
    for labels in ([1, 2, 3, 1, 2], [9] * 5):
        d = {**dets, "labels": torch.tensor(labels)}
        assert drop_known_under_unknown(d, 9, 0.5) is d
