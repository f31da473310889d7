"""OWOD metrics against detections worked out by hand."""

from __future__ import annotations

import pytest
import torch

from uniframework.detect.metrics import UNKNOWN, owod_metrics, voc_ap


def _t(boxes, labels, scores=None):
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    if scores is not None:
        out["scores"] = torch.tensor(scores, dtype=torch.float32)
    return out


A, B, U1 = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
C, U2, NOWHERE = [0, 0, 10, 10], [20, 0, 30, 10], [60, 60, 70, 70]
# image 0: class 0 at A, class 1 at B, an unknown (class 5) at U1; image 1: class 0, class 6
GT = [_t([A, B, U1], [0, 1, 5]), _t([C, U2], [0, 6])]
DETS = [
    # TP for 0; a class-0 detection on the unknown (open-set error); unknown hit; TP for 1
    _t([A, U1, U1, B], [0, 0, UNKNOWN, 1], [0.9, 0.8, 0.7, 0.6]),
    # TP for 0; an unknown detection on nothing
    _t([C, NOWHERE], [0, UNKNOWN], [0.5, 0.4]),
]


def test_hand_made_detections():
    m = owod_metrics(DETS, GT, known=[0, 1], previous=[0])
    # class 0 in score order: TP (img0), FP (img0, on U1), TP (img1); 2 GT boxes
    #   recall .5 .5 1, precision 1 .5 .667 -> AP = .5 * 1 + .5 * 2/3
    ap0, ap1 = 0.5 + 0.5 * 2 / 3, 1.0
    assert m["map50_prev"] == pytest.approx(ap0)
    assert m["map50_cur"] == pytest.approx(ap1)
    assert m["map50_all"] == pytest.approx((ap0 + ap1) / 2)
    # one of the two unknown objects is found by an "unknown" detection
    assert m["u_recall50"] == pytest.approx(0.5)
    # one known-class detection lies on an unknown object
    assert m["a_ose"] == 1
    # WI at recall 0.8: class 0 nearest rank 3 (recall 1): 1 open-set FP among 3 detections;
    # class 1 rank 1 (recall 1): 0 among 1 -> mean(1, 0) / mean(3, 1)
    assert m["wi"] == pytest.approx(0.5 / 2.0)


def test_clean_detector_has_no_wilderness_impact():
    perfect = [_t([A, B, U1], [0, 1, UNKNOWN], [0.9, 0.8, 0.7]), _t([C, U2], [0, UNKNOWN], [1, 1])]
    m = owod_metrics(perfect, GT, known=[0, 1])
    assert m["map50_all"] == pytest.approx(1.0)
    assert m["u_recall50"] == pytest.approx(1.0)
    assert m["wi"] == 0.0 and m["a_ose"] == 0
    assert "map50_prev" not in m  # no previous task


def test_unknown_set_follows_known_classes():
    # with class 5 known, the class-0 detection on U1 is an ordinary FP, not an open-set error
    m = owod_metrics(DETS, GT, known=[0, 1, 5])
    assert m["a_ose"] == 0 and m["wi"] == 0.0
    # only class 6 is unknown now, and nothing labelled unknown overlaps it
    assert m["u_recall50"] == 0.0


def test_duplicate_detections_count_once():
    dup = [_t([A, A], [0, 0], [0.9, 0.8]), _t([], [], [])]
    m = owod_metrics(dup, GT, known=[0])
    # TP then FP (the box is taken); recall .5 at best -> AP .5
    assert m["map50_all"] == pytest.approx(0.5)


def test_voc_ap_envelope():
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 1 / 3)
