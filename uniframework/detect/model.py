"""Faster R-CNN with FPN on torchvision's parts, opened up for ORE.

torchvision's `FasterRCNN.forward` hides what ORE needs: the RPN's objectness of each proposal
(to auto-label unknowns), the RoI feature of each sampled proposal (contrastive clustering) and
the class logits of each detection (energy identifier). So we keep torchvision's pieces
(`GeneralizedRCNNTransform`, `RegionProposalNetwork`, `RoIHeads` sampling and box coding,
`MultiScaleRoIAlign`, `TwoMLPHead`, `FastRCNNPredictor`, `FeaturePyramidNetwork`) and wire the
forward pass here.

Class layout of the box predictor (fixed over all tasks, as OWOD allocates every class up
front): ``0`` background, ``1..C`` the protocol's classes in order of introduction, ``C + 1``
the "unknown" class (ORE only). Logits of classes not yet seen are masked (OWOD's
``invalid_class_range``), so a task-1 model never predicts a task-2 class.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..config import ModelConfig
from ..errors import UserError
from .ore import UNKNOWN_IOU, auto_label_unknowns

MASKED = -1e4  # logit of a class that is not seen yet (softmax ~ 0, finite for the energy)


class TimmFPN(nn.Module):
    """A registered (or timm) backbone as multi-scale feature maps + torchvision's FPN.

    `out_indices` pick timm `feature_info` levels (ResNet: 1..4 = strides 4..32); the FPN adds
    a max-pooled extra level for the RPN. `out_channels` is what torchvision's heads read.
    """

    def __init__(self, backbone: str, out_indices: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        from timm.models import FeatureListNet

        from ..models.backbones import build_backbone

        # detection keeps the usual stride-4 stem (a stride-1 stem would cost 16x at the FPN)
        body = build_backbone(ModelConfig(backbone=backbone, small_input=False), 224)
        try:
            self.body = _feature_net(FeatureListNet, body, out_indices)
        except (AttributeError, AssertionError, IndexError, KeyError, ValueError) as err:
            raise UserError(
                f"backbone '{backbone}' gives no multi-scale feature maps at out_indices "
                f"{list(out_indices)} ({type(err).__name__}: {err}); use a CNN backbone "
                "(resnet_tiny, resnet18, efficientnet_b0, ...) or fix `fpn_levels`"
            ) from None
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _feature_net(cls, body: nn.Module, out_indices: tuple[int, ...]) -> nn.Module:
    """timm's feature wrapper; models whose `feature_info` names nested blocks (EfficientNet:
    `blocks.1`) need the flattened module tree."""
    try:
        return cls(body, out_indices=out_indices)
    except AssertionError:
        return cls(body, out_indices=out_indices, flatten_sequential=True)


class ObjectnessRPN(RegionProposalNetwork):
    """torchvision's RPN, returning each proposal's objectness (sigmoid) beside its box."""

    def forward(self, images, features, targets=None):  # noqa: D401 — same as torchvision
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        per_level = [o[0].numel() for o in objectness]  # anchors per level (A * H * W)
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        losses = {}
        if self.training:
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            reg_targets = self.box_coder.encode(matched, anchors)
            loss_obj, loss_reg = self.compute_loss(objectness, deltas, labels, reg_targets)
            losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_reg}
        return boxes, scores, losses


class OpenWorldRoIHeads(RoIHeads):
    """torchvision's RoI heads with ORE's unknown class, exposed RoI features and logits.

    `num_classes`: C known classes over all tasks; `unknown`: add the "unknown" output C + 1,
    trained on the top-`unknown_topk` proposals per image (by objectness) whose IoU with every
    ground-truth box is below `unknown_iou` (default 0.3, measured; OWOD: 0.5, what its RoI
    matcher calls background).
    `num_seen`: classes known so far (1..num_seen unmasked).
    """

    def __init__(
        self,
        *args: Any,
        num_classes: int,
        unknown: bool,
        unknown_topk: int = 1,
        unknown_iou: float = UNKNOWN_IOU,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_classes, self.unknown = num_classes, unknown
        self.unknown_topk, self.unknown_iou = unknown_topk, unknown_iou
        self.num_seen = num_classes

    @property
    def unknown_label(self) -> int | None:
        return self.num_classes + 1 if self.unknown else None

    def valid_outputs(self, device: torch.device) -> Tensor:
        """[C + 1 (+1)] bool: background, the seen classes and unknown."""
        n = self.num_classes + 1 + int(self.unknown)
        valid = torch.zeros(n, dtype=torch.bool, device=device)
        valid[: self.num_seen + 1] = True
        if self.unknown:
            valid[-1] = True
        return valid

    def sample(
        self, proposals: list[Tensor], objectness: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Training proposals per image with labels and box-regression targets.

        torchvision's sampling (GT boxes appended, fg IoU >= fg_iou_thresh, fixed batch and
        positive fraction), then ORE's auto-labelling: the top-k RPN proposals that overlap no
        GT box are forced into the batch with the unknown label.
        """
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        rpn_boxes = proposals
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        sampled = self.subsample(labels)
        out_props, out_labels, matched_boxes = [], [], []
        for i in range(len(proposals)):
            idx, lab = sampled[i], labels[i][sampled[i]]
            if self.unknown:
                unk = auto_label_unknowns(
                    rpn_boxes[i], objectness[i], gt_boxes[i], self.unknown_topk, self.unknown_iou
                )
                keep = ~torch.isin(idx, unk)
                idx = torch.cat([idx[keep], unk])
                lab = torch.cat([lab[keep], torch.full_like(unk, self.unknown_label)])
            gt = (
                gt_boxes[i]
                if gt_boxes[i].numel()
                else torch.zeros(1, 4, dtype=dtype, device=device)
            )
            out_props.append(proposals[i][idx])
            out_labels.append(lab)
            matched_boxes.append(gt[matched_idxs[i][idx]])
        reg_targets = self.box_coder.encode(matched_boxes, out_props)
        return out_props, out_labels, reg_targets

    def head(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes: list
    ) -> tuple[Tensor, Tensor, Tensor]:
        """RoI features [N, R] (box head output, ORE's clustering space), masked class logits
        [N, K] and box deltas [N, K * 4] for the proposals of all images, concatenated."""
        roi = self.box_head(self.box_roi_pool(features, proposals, image_sizes))
        logits, deltas = self.box_predictor(roi)
        logits = logits.masked_fill(~self.valid_outputs(logits.device), MASKED)
        return roi, logits, deltas

    def loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, reg_targets: Tensor) -> dict:
        """Cross-entropy over all outputs; smooth-L1 box loss on known foreground only (an
        auto-labelled unknown has no box to regress to). Scaled as torchvision's
        `fastrcnn_loss` (beta 1/9, summed over positives / all sampled)."""
        loss_cls = F.cross_entropy(logits, labels)
        pos = torch.nonzero((labels > 0) & (labels <= self.num_classes)).flatten()
        d = deltas.reshape(len(labels), -1, 4)[pos, labels[pos]]
        loss_box = F.smooth_l1_loss(d, reg_targets[pos], beta=1 / 9, reduction="sum")
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box / max(1, labels.numel())}

    def postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_sizes: list
    ) -> list[dict[str, Tensor]]:
        """Per image: boxes [n, 4], labels [n] (model space), scores [n] and the logits [n, K]
        of the proposal each detection came from (for the energy identifier).

        As torchvision's `postprocess_detections` (softmax, per-class boxes, score threshold,
        class-wise NMS, top `detections_per_img`), over the seen classes and unknown; an
        unknown detection keeps its proposal box (the unknown output has no regression)."""
        probs = logits.softmax(-1)
        boxes = self.box_coder.decode(deltas, proposals)  # [N, K, 4]
        if self.unknown:
            boxes[:, -1] = torch.cat(proposals)
        classes = torch.nonzero(self.valid_outputs(logits.device)[1:]).flatten() + 1
        out = []
        counts = [len(p) for p in proposals]
        for b, p, lg, size in zip(
            boxes.split(counts), probs.split(counts), logits.split(counts), image_sizes
        ):
            b = box_ops.clip_boxes_to_image(b[:, classes], size)  # [n, K', 4]
            s = p[:, classes]
            row = torch.arange(len(p), device=p.device)[:, None].expand_as(s)
            lab = classes[None, :].expand_as(s)
            b, s, row, lab = b.reshape(-1, 4), s.flatten(), row.flatten(), lab.flatten()
            keep = torch.nonzero(s > self.score_thresh).flatten()
            keep = keep[box_ops.remove_small_boxes(b[keep], 1e-2)]
            keep = keep[box_ops.batched_nms(b[keep], s[keep], lab[keep], self.nms_thresh)]
            keep = keep[: self.detections_per_img]
            out.append(
                {"boxes": b[keep], "labels": lab[keep], "scores": s[keep], "logits": lg[row[keep]]}
            )
        return out


class OpenWorldDetector(nn.Module):
    """Faster R-CNN (FPN) whose forward passes expose what ORE needs (see module docstring)."""

    def __init__(
        self,
        num_classes: int,
        unknown: bool = True,
        backbone: str = "resnet_tiny",
        image_size: int = 112,
        fpn_levels: tuple[int, ...] = (1, 2, 3, 4),
        fpn_channels: int = 64,
        anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256),
        representation: int = 128,
        rpn_pre_nms: int = 300,
        rpn_post_nms: int = 100,
        rpn_batch: int = 128,
        roi_batch: int = 64,
        detections_per_img: int = 50,
        score_thresh: float = 0.05,
        unknown_topk: int = 1,
        unknown_iou: float = UNKNOWN_IOU,
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.25, 0.25, 0.25),
    ) -> None:
        super().__init__()
        self.backbone = TimmFPN(backbone, tuple(fpn_levels), fpn_channels)
        levels = len(fpn_levels) + 1  # + the max-pooled level
        if len(anchor_sizes) != levels:
            raise UserError(
                f"option 'anchor_sizes' has {len(anchor_sizes)} sizes but the FPN has {levels} "
                f"levels ({len(fpn_levels)} of `fpn_levels` + 1 pooled): give {levels} sizes"
            )
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
        self.transform = GeneralizedRCNNTransform(image_size, image_size, list(mean), list(std))
        self.rpn = ObjectnessRPN(
            anchors,
            RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=rpn_batch,
            positive_fraction=0.5,
            pre_nms_top_n={"training": rpn_pre_nms, "testing": rpn_pre_nms},
            post_nms_top_n={"training": rpn_post_nms, "testing": rpn_post_nms},
            nms_thresh=0.7,
        )
        names = [str(i) for i in range(len(fpn_levels))]
        outputs = num_classes + 1 + int(unknown)
        self.roi_heads = OpenWorldRoIHeads(
            MultiScaleRoIAlign(names, 7, 2),
            TwoMLPHead(fpn_channels * 7 * 7, representation),
            FastRCNNPredictor(representation, outputs),
            0.5,  # fg IoU (Fast R-CNN)
            0.5,  # bg IoU
            roi_batch,
            0.25,  # positive fraction
            None,  # box coder weights: torchvision's (10, 10, 5, 5)
            score_thresh,
            0.5,  # NMS IoU
            detections_per_img,
            num_classes=num_classes,
            unknown=unknown,
            unknown_topk=unknown_topk,
            unknown_iou=unknown_iou,
        )

    @property
    def num_seen(self) -> int:
        return self.roi_heads.num_seen

    @num_seen.setter
    def num_seen(self, value: int) -> None:
        self.roi_heads.num_seen = int(value)

    def _prepare(self, images: list[Tensor], targets=None):
        images = [im.float().div(255) if im.dtype == torch.uint8 else im for im in images]
        return self.transform(images, targets)

    def forward_train(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """Losses, and per sampled proposal: RoI feature [N, R], logits [N, K], label [N]
        (model space: 0 background, 1..C known, C + 1 unknown). Labels in `targets` are in
        model space too."""
        image_list, targets = self._prepare(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, objectness, rpn_losses = self.rpn(image_list, features, targets)
        props, labels, reg = self.roi_heads.sample(proposals, objectness, targets)
        roi, logits, deltas = self.roi_heads.head(features, props, image_list.image_sizes)
        labels, reg = torch.cat(labels), torch.cat(reg)
        losses = {**rpn_losses, **self.roi_heads.loss(logits, deltas, labels, reg)}
        return losses, roi, logits, labels

    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections per image, in the input image's pixels (`OpenWorldRoIHeads.postprocess`)."""
        sizes = [tuple(im.shape[-2:]) for im in images]
        image_list, _ = self._prepare(images)
        features = self.backbone(image_list.tensors)
        proposals, _, _ = self.rpn(image_list, features)
        _, logits, deltas = self.roi_heads.head(features, proposals, image_list.image_sizes)
        dets = self.roi_heads.postprocess(logits, deltas, proposals, image_list.image_sizes)
        return self.transform.postprocess(dets, image_list.image_sizes, sizes)

    @torch.no_grad()
    def gt_features(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Tensor]:
        """RoI features [n_i, R] of each image's ground-truth boxes (exemplar herding)."""
        image_list, targets = self._prepare(images, targets)
        features = self.backbone(image_list.tensors)
        boxes = [t["boxes"] for t in targets]
        roi = self.roi_heads.box_head(
            self.roi_heads.box_roi_pool(features, boxes, image_list.image_sizes)
        )
        return list(roi.split([len(b) for b in boxes]))
