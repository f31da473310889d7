"""ORE's parts for detection (Joseph et al., CVPR 2021, arXiv 2103.02603).

- Auto-labelling unknowns (§4.2): among the RPN proposals that overlap no ground-truth box, the
  top-k by objectness are labelled "unknown" (OWOD: ``NUM_UNK_PER_IMAGE = 1``). "Overlaps no
  box" is, by default, ours: IoU below ``UNKNOWN_IOU = 0.3`` with every box. OWOD's is IoU
  below ``BACKGROUND_IOU = 0.5`` (what its RoI matcher labels background, ``ROI_HEADS.
  IOU_THRESHOLDS [0.5]``), available as `unknown_iou: 0.5`; measured on the digit-scene
  benchmark it turns near-miss boxes of known objects (IoU 0.3-0.5, high objectness because
  they sit on an object) into "unknown" and the known mAP falls (BENCHMARKS.md "Faithfulness").
  One difference remains: OWOD picks among its sampled RoI batch, we among all
  the RPN's proposals (the pick then joins the batch).
- Contrastive clustering (§4.1) of the RoI head's feature: a per-class feature store and
  momentum prototypes (`uniframework.supervised.prototypes`); the unknown class has its own
  prototype, background none (OWOD's ``clstr_loss_l2_cdist`` masks background out). As in
  the supervised stage (details in `prototypes.py`): prototypes are updated every
  `prototype_every_fraction` of a training loop's steps by default (OWOD's ratio, 3000 of
  18,000 iterations: four or five updates per task, as OWOD's five in task 1; its absolute
  3,000 would mean none in our runs of a few hundred steps), or every `prototype_every` steps
  when set (10 was our earlier default); the loss sees the paper's raw RoI features with margin
  10 by default, or L2-normalised ones (`contrastive_features: normalised`, margin 1.0) for
  backbones whose feature norms dwarf the margin.
- Energy-based unknown identifier (§4.3): Weibulls on the energies of known and auto-labelled
  unknown proposals of a held-out pass (`uniframework.openset.weibull`; far-out energies are
  left out of the fits, see `_inlier`); at test time a known
  detection whose unknown density wins becomes "unknown", and an "unknown" detection whose
  known density wins is dropped (OWOD's ``update_label_based_on_energy``).
- Class-balanced exemplar fine-tuning (§4.4): per seen class, `m` images chosen by herding on
  a per-image feature of that class (the mean RoI feature of its boxes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from ..incremental.memory import herding
from ..openset.scores import energy
from ..openset.weibull import EnergyWeibullScorer
from ..supervised.prototypes import (
    UPDATE_FRACTION,
    FeatureStore,
    contrastive_clustering_loss,
    prototype_interval,
    update_prototypes,
)

BACKGROUND_IOU = 0.5  # OWOD's ROI_HEADS.IOU_THRESHOLDS: below it, a proposal is background
# our default, measured: at 0.5 near-miss boxes of known objects become "unknown" and the
# known mAP falls (BENCHMARKS.md "Faithfulness", detect benchmark)
UNKNOWN_IOU = 0.3


def auto_label_unknowns(
    proposals: Tensor,
    objectness: Tensor,
    gt_boxes: Tensor,
    k: int = 1,
    iou_thresh: float = UNKNOWN_IOU,
) -> Tensor:
    """Indices into ``proposals [P, 4]`` of the (at most) `k` with the highest ``objectness
    [P]`` among those whose IoU with every box of ``gt_boxes [G, 4]`` is below `iou_thresh`
    (all proposals qualify when G = 0). Ordered by objectness, highest first. Default: one per
    image (OWOD's), IoU below 0.3 (ours; OWOD's background threshold is 0.5)."""
    if k <= 0 or len(proposals) == 0:
        return torch.zeros(0, dtype=torch.long, device=proposals.device)
    free = torch.ones(len(proposals), dtype=torch.bool, device=proposals.device)
    if len(gt_boxes):
        free = box_iou(proposals, gt_boxes.to(proposals.dtype)).amax(1) < iou_thresh
    cand = torch.nonzero(free).flatten()
    top = objectness[cand].topk(min(k, len(cand))).indices
    return cand[top]


class ContrastiveClustering(nn.Module):
    """Feature store + prototypes over ``num_classes`` clustering classes (known classes and
    unknown; labels outside ``[0, num_classes)`` — background — are ignored).

    `step(features [N, R], labels [N], live)` fills the store every call; once `live`, the
    prototypes start as the store means, follow them with `momentum` every `interval` steps,
    and the hinge loss is returned (otherwise zero). `interval`: `every` steps when given, else
    `every_fraction` of the steps of the current training loop (`start_loop`). `normalise`:
    the loss on L2-normalised features and prototypes.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        store_size: int = 20,
        momentum: float = 0.99,
        margin: float = 10.0,
        every: int | None = None,
        every_fraction: float = UPDATE_FRACTION,
        normalise: bool = False,
    ) -> None:
        super().__init__()
        self.store = FeatureStore(num_classes, dim, store_size)
        self.momentum, self.margin, self.normalise = momentum, margin, normalise
        self.every, self.every_fraction = every, every_fraction
        self.interval = every  # None until `start_loop` when it is a fraction of a loop
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("ready", torch.zeros(num_classes, dtype=torch.bool))
        # a buffer, so a resumed run keeps the prototype updates' schedule (every `interval`)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def start_loop(self, total_steps: int) -> None:
        """Fix the update interval for a training loop of `total_steps` optimiser steps."""
        if self.every is None:
            self.interval = prototype_interval(total_steps, None, self.every_fraction)

    def step(self, features: Tensor, labels: Tensor, live: bool) -> Tensor:
        self.store.update(features, labels)
        self.steps += 1
        if not live:
            return features.sum() * 0.0
        if self.interval is None:
            raise RuntimeError("ContrastiveClustering: call start_loop(total_steps) first")
        means, valid = self.store.means(sync=True)
        fresh = valid & ~self.ready  # a class's first prototype is its store mean
        if int(self.steps) % self.interval == 0 or bool(fresh.any()):
            new = update_prototypes(self.prototypes, means, self.momentum, valid & self.ready)
            new = torch.where(fresh[:, None], means, new)
            self.prototypes.copy_(new)
            self.ready |= valid
        return contrastive_clustering_loss(
            features, labels, self.prototypes, self.margin, self.ready, self.normalise
        )


def known_logits(logits: Tensor, num_seen: int) -> Tensor:
    """The logits of the seen known classes, ``[N, num_seen]`` (background / unknown out)."""
    return logits[:, 1 : 1 + num_seen]


def fit_identifier(
    logits: Tensor,
    labels: Tensor,
    num_classes: int,
    num_seen: int,
    temperature: float = 1.5,
    degenerate: str = "shape_ge_1",
) -> EnergyWeibullScorer:
    """Weibull fits on held-out proposals: ``logits [N, K]``, model-space ``labels [N]``; known
    foreground (1..num_classes) vs auto-labelled unknown (num_classes + 1); background is
    not used (OWOD's ``compute_energy`` takes the foreground and unknown proposals).
    `degenerate`: what a shape < 1 unknown fit becomes (`WeibullIdentifier`)."""
    fg = (labels > 0) & (labels <= num_classes)
    unk = labels == num_classes + 1
    scorer = EnergyWeibullScorer(temperature=temperature, degenerate=degenerate)
    x = -energy(known_logits(logits, num_seen), temperature)  # [N], what the Weibulls fit
    keep = (fg & _inlier(x, fg)) | (unk & _inlier(x, unk))
    lab = torch.where(unk[keep], -1, labels[keep] - 1)
    return scorer.fit(None, known_logits(logits[keep], num_seen), lab)


def _inlier(x: Tensor, group: Tensor) -> Tensor:
    """[N] bool: inside Tukey's far-out fences (quartiles -+ 3 IQR) of `x[group]`.

    Our addition: the 3-parameter Weibull MLE puts `loc` below the smallest sample, so one
    far-out proposal (a held-out box whose logits are all very negative) can drag the fit to a
    degenerate shape < 1 that then claims no test detection at all."""
    v = x[group]
    if len(v) < 8:
        return torch.ones_like(x, dtype=torch.bool)
    q1, q3 = torch.quantile(v, 0.25), torch.quantile(v, 0.75)
    far = 3.0 * (q3 - q1)
    return (x >= q1 - far) & (x <= q3 + far)


def apply_identifier(
    dets: dict[str, Tensor],
    scorer: EnergyWeibullScorer,
    num_classes: int,
    num_seen: int,
    keep_unknown: bool = True,
) -> dict[str, Tensor]:
    """Relabel one image's detections (model space, ``logits [n, K]``): known -> unknown where
    the unknown density wins. With ``keep_unknown=False``, unknown detections the known density
    claims are dropped too (OWOD's ``update_label_based_on_energy``).

    Ours by default: the unknown head's own detections are kept. The head is trained on the
    auto-labelled proposals; the 1-D energy densities, fitted on some sixty held-out picks, are
    a blunter test, and where the unknown fit is wide the known density claims almost every
    unknown detection: on the digit scenes' task 2 (seed 2) dropping them cut U-Recall from
    0.49 to 0.05; mAP, WI and A-OSE count known detections only and do not move. (Without an
    unknown fit, ``keep_unknown=False`` drops the unknown detections the known-only rule does
    not flag: the stage's behaviour before the option.)"""
    unknown_label = num_classes + 1
    if len(dets["labels"]) == 0:
        return dets
    is_unk = scorer.predict_unknown(known_logits(dets["logits"], num_seen)).to(
        dets["labels"].device
    )
    labels = torch.where(is_unk, torch.full_like(dets["labels"], unknown_label), dets["labels"])
    keep = is_unk | (dets["labels"] != unknown_label)
    if keep_unknown:  # relabel, never drop
        keep = torch.ones_like(keep)
    return {k: (labels if k == "labels" else v)[keep] for k, v in dets.items()}


def drop_known_under_unknown(
    dets: dict[str, Tensor], unknown_label: int, iou: float
) -> dict[str, Tensor]:
    """One image's detections without the known-class ones that a higher-scoring "unknown"
    detection covers at IoU >= `iou` (ours, option `unknown_over_known`).

    Faster R-CNN emits one detection per class above the score threshold from each proposal,
    so an object called unknown also carries low-score known-class boxes, each an open-set
    error (A-OSE) and a false positive of that class. The object is one thing: where the
    unknown reading is the more confident one, the known readings go. Known detections never
    remove unknown ones (a class-agnostic NMS would, and would cost U-Recall)."""
    unk = dets["labels"] == unknown_label
    if not unk.any() or unk.all():
        return dets
    known = torch.nonzero(~unk).flatten()
    overlap = box_iou(dets["boxes"][known].float(), dets["boxes"][unk].float()) >= iou  # [k, u]
    higher = dets["scores"][unk][None, :] > dets["scores"][known][:, None]
    keep = torch.ones(len(unk), dtype=torch.bool, device=unk.device)
    keep[known[(overlap & higher).any(1)]] = False
    return {k: v[keep] for k, v in dets.items()}


def read_out(
    dets: dict[str, Tensor],
    scorer: EnergyWeibullScorer | None,
    num_classes: int,
    num_seen: int,
    keep_unknown: bool = True,
    over_known: float | None = None,
) -> dict[str, Tensor]:
    """One image's raw detections (model space) as the stage reports them: the energy
    identifier (`apply_identifier`, when there is a `scorer`), then `drop_known_under_unknown`
    at IoU `over_known` (None = off; a no-op for the baseline, which has no unknown output)."""
    if scorer is not None:
        dets = apply_identifier(dets, scorer, num_classes, num_seen, keep_unknown)
    if over_known is not None:
        dets = drop_known_under_unknown(dets, num_classes + 1, over_known)
    return dets


def select_exemplars(
    image_features: dict[int, list[tuple[int, Tensor]]], per_class: int
) -> dict[int, list[int]]:
    """Class-balanced exemplar images: ``{class: [(image index, feature [R]), ...]}`` ->
    ``{class: image indices}``, `per_class` per class chosen by iCaRL herding (closest running
    mean to the class mean), in herding order."""
    out = {}
    for c, rows in sorted(image_features.items()):
        if not rows:
            continue
        index = torch.tensor([i for i, _ in rows])
        feats = torch.stack([f for _, f in rows])  # [n_c, R]
        out[c] = index[herding(feats, per_class)].tolist()
    return out
