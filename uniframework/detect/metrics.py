"""The OWOD metrics (ORE §5; OWOD's ``pascal_voc_evaluation.py``), at IoU 0.5.

Inputs, per image: detections ``{"boxes" [n, 4], "labels" [n], "scores" [n]}`` with dataset
class labels and ``-1`` for "unknown"; ground truth ``{"boxes", "labels"}`` with every object
annotated. Given the known classes, every other ground-truth object is an *unknown object*.

- known mAP@50: Pascal VOC AP (all-point interpolation, as OWOD's evaluator) per known class,
  averaged over the previously known / current / all known classes. A detection is a true
  positive when its IoU with a not yet matched box of its class is > 0.5, in score order.
- U-Recall@50: matched unknown objects / unknown objects, for the detections labelled unknown.
- A-OSE: number of known-class detections whose IoU with some unknown object is > 0.5.
- WI at known recall 0.8: per known class, at the detection rank whose recall is nearest 0.8,
  ``fp_open / (tp + fp)`` (open-set false positives = such unknown hits so far); WI = mean of
  the ``fp_open`` over classes / mean of the ``tp + fp`` — i.e. ``P_K / P_{K u U} - 1`` as the
  paper defines it.

Written here rather than with torchmetrics' `MeanAveragePrecision`: that needs pycocotools or
faster-coco-eval (not project dependencies), computes COCO's 101-point AP, and has no WI,
A-OSE or U-Recall; OWOD's numbers are VOC-style, as these. Box IoU is continuous
(torchvision's `box_iou`), not VOC's "+1 pixel" convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

UNKNOWN = -1


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ "all-point" AP)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _ranked(dets: Sequence[dict], label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All detections of `label` over the images, by descending score (stable):
    (image index [d], boxes [d, 4], scores [d])."""
    img, boxes, scores = [], [], []
    for i, d in enumerate(dets):
        m = d["labels"] == label
        img.append(np.full(int(m.sum()), i))
        boxes.append(d["boxes"][m].float().reshape(-1, 4))
        scores.append(d["scores"][m].float())
    img_a = np.concatenate(img) if img else np.zeros(0, int)
    box_t = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    s = torch.cat(scores).numpy() if scores else np.zeros(0)
    order = np.argsort(-s, kind="stable")
    return img_a[order], box_t[torch.from_numpy(order)], s[order]


def _match(img: np.ndarray, boxes: torch.Tensor, gts: Sequence[torch.Tensor], iou: float):
    """Greedy VOC matching in rank order: tp [d] (0/1), each GT box matched at most once."""
    tp = np.zeros(len(img))
    used = [np.zeros(len(g), bool) for g in gts]
    for d in range(len(img)):
        g = gts[img[d]]
        if len(g) == 0:
            continue
        ious = box_iou(boxes[d : d + 1], g)[0].numpy()
        j = int(ious.argmax())
        if ious[j] > iou and not used[img[d]][j]:
            tp[d], used[img[d]][j] = 1.0, True
    return tp


def _hits_any(img: np.ndarray, boxes: torch.Tensor, gts: Sequence[torch.Tensor], iou: float):
    """[d] 1 where a detection overlaps some box of its image's `gts` with IoU > `iou`."""
    out = np.zeros(len(img))
    for d in range(len(img)):
        g = gts[img[d]]
        if len(g):
            out[d] = float(box_iou(boxes[d : d + 1], g).max() > iou)
    return out


def owod_metrics(
    detections: Sequence[dict],
    ground_truth: Sequence[dict],
    known: Sequence[int],
    previous: Sequence[int] = (),
    iou: float = 0.5,
    recall_level: float = 0.8,
) -> dict[str, float]:
    """The metrics of the module docstring. `known`: classes known now; `previous`: those known
    before this task (the rest of `known` is "current"). mAPs and U-Recall are fractions in
    [0, 1]; classes without a ground-truth box are left out of the mAP means."""
    known, previous = [int(c) for c in known], [int(c) for c in previous]
    gt_boxes = [g["boxes"].float().reshape(-1, 4) for g in ground_truth]
    gt_labels = [g["labels"] for g in ground_truth]
    known_t = torch.tensor(known, dtype=torch.long)
    unk_gts = [b[~torch.isin(lab, known_t)] for b, lab in zip(gt_boxes, gt_labels)]
    ap, aose, fp_open, tp_fp = {}, 0.0, [], []
    for c in known:
        gts = [b[lab == c] for b, lab in zip(gt_boxes, gt_labels)]
        npos = sum(len(g) for g in gts)
        img, boxes, _ = _ranked(detections, c)
        tp = _match(img, boxes, gts, iou)
        is_unk = _hits_any(img, boxes, unk_gts, iou)
        aose += is_unk.sum()
        if npos == 0:
            continue
        rec = np.cumsum(tp) / npos
        prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        ap[c] = voc_ap(rec, prec)
        if len(tp):
            at = int(np.argmin(np.abs(rec - recall_level)))  # first rank nearest the level
            fp_open.append(np.cumsum(is_unk)[at])
            tp_fp.append(at + 1.0)
    n_unk = sum(len(g) for g in unk_gts)
    img, boxes, _ = _ranked(detections, UNKNOWN)
    u_tp = _match(img, boxes, unk_gts, iou).sum()

    def mean_ap(classes: Sequence[int]) -> float:
        vals = [ap[c] for c in classes if c in ap]
        return float(np.mean(vals)) if vals else 0.0

    current = [c for c in known if c not in set(previous)]
    out = {
        "map50_all": mean_ap(known),
        "map50_cur": mean_ap(current),
        "u_recall50": float(u_tp / n_unk) if n_unk else 0.0,
        "wi": float(np.mean(fp_open) / np.mean(tp_fp)) if tp_fp else 0.0,
        "a_ose": float(aose),
    }
    if previous:
        out["map50_prev"] = mean_ap(previous)
    return out
