"""The loops of the `detect` stage: training, the held-out pass, detection, exemplar choice.

Plain PyTorch on one device (the detector's outside state — feature store, Weibulls — is not
DDP-synchronised, so the stage does not use Lightning's strategies).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from ..errors import UserError
from ..io import AtomicCheckpointIO
from ..openset.weibull import EnergyWeibullScorer
from ..training import warmup_cosine
from .datasets import DetectionSet, collate
from .metrics import UNKNOWN
from .model import OpenWorldDetector
from .options import DetectOptions
from .ore import ContrastiveClustering, read_out, select_exemplars

log = logging.getLogger(__name__)


def device_for(accelerator: str) -> torch.device:
    want_gpu = accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if want_gpu and torch.cuda.is_available() else "cpu")


def _to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def train_detector(
    model: OpenWorldDetector,
    clustering: ContrastiveClustering | None,
    data: DetectionSet,
    epochs: int,
    lr: float,
    opts: DetectOptions,
    device: torch.device,
    seed: int,
    what: str,
    checkpoint: Path | None = None,
) -> None:
    """AdamW with warm-up + cosine over `epochs` on `data` (model-space labels).

    With `checkpoint`, all the loop's state (weights, optimiser, schedule, clustering, random
    states) is written there after every epoch, and a loop that finds the file goes on after
    its epoch — a run killed mid-task resumes where it stopped, drawing what it would have."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, opts.batch_size, shuffle=True, collate_fn=collate, generator=gen)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=opts.weight_decay)
    total = epochs * len(loader)
    warmup = min(50, max(1, total // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: warmup_cosine(s, warmup, total))
    live_from = int(opts.contrastive_start * total)
    if clustering is not None:  # prototype updates: every `prototype_every_fraction` of this loop
        clustering.start_loop(total)
    model.train().to(device)
    loop = dict(model=model, clustering=clustering, optimizer=optim, scheduler=sched, loader=gen)
    start, step = 0, 0
    if checkpoint is not None and checkpoint.is_file():
        start, step = _load_loop(checkpoint, **loop)
        log.info("detect %s: resuming after epoch %d from %s", what, start, checkpoint)
    for epoch in range(start, epochs):
        sums: dict[str, float] = {}
        for images, targets, _ in loader:
            images = [im.to(device) for im in images]
            losses, roi, _, labels = model.forward_train(images, _to(targets, device))
            if clustering is not None and opts.contrastive_weight > 0:
                # clustering classes: known 0..C-1, unknown C; background (-1) is ignored
                cc = clustering.step(roi, labels - 1, live=step >= live_from)
                losses["loss_clustering"] = opts.contrastive_weight * cc
            loss = sum(losses.values())
            if not math.isfinite(float(loss.detach())):
                raise UserError(
                    f"detect: the loss became {float(loss)} ({what}, epoch {epoch + 1}); lower "
                    "`lr` or check the boxes of the data (x2 > x1, y2 > y1)"
                )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optim.step()
            sched.step()
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        means = ", ".join(f"{k} {v / max(1, len(loader)):.3f}" for k, v in sums.items())
        log.info("detect %s: epoch %d/%d: %s", what, epoch + 1, epochs, means)
        if checkpoint is not None:
            _save_loop(checkpoint, epoch + 1, step, **loop)


def _save_loop(path: Path, epoch: int, step: int, model, clustering, optimizer, scheduler, loader):
    """The training loop's state after `epoch` epochs (`step` steps), written atomically."""
    state = {
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "clustering": clustering.state_dict() if clustering is not None else {},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "loader": loader.get_state(),
            "torch": torch.get_rng_state(),  # RoI sampling, the RPN's proposal sampling
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    AtomicCheckpointIO().save_checkpoint(state, path)


def _load_loop(path: Path, model, clustering, optimizer, scheduler, loader) -> tuple[int, int]:
    """Put back what `_save_loop` wrote (read with `weights_only`); returns (epoch, step)."""
    state = AtomicCheckpointIO().load_checkpoint(path)
    model.load_state_dict(state["model"])
    if clustering is not None:
        clustering.load_state_dict(state["clustering"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loader.set_state(state["rng"]["loader"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["epoch"], state["step"]


@torch.no_grad()
def heldout_logits(
    model: OpenWorldDetector, data: DetectionSet, device: torch.device, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, K] and model labels [N] of the sampled (incl. auto-labelled) proposals."""
    model.eval().to(device)
    logits, labels = [], []
    for images, targets, _ in DataLoader(data, batch, collate_fn=collate):
        images = [im.to(device) for im in images]
        _, _, lg, lab = model.forward_train(images, _to(targets, device))
        logits.append(lg.cpu())
        labels.append(lab.cpu())
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def detect_all(
    model: OpenWorldDetector,
    data: DetectionSet,
    scorer: EnergyWeibullScorer | None,
    order: list[int],
    device: torch.device,
    batch: int,
    keep_unknown: bool = True,
    unknown_over_known: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Detections on every image, labels in dataset space (-1 = unknown), read out by
    `ore.read_out` (`keep_unknown`, `unknown_over_known`: its options)."""
    model.eval().to(device)
    lut = torch.tensor([-1] + list(order) + [UNKNOWN])  # model label -> dataset label
    out = []
    for images, _, _ in DataLoader(data, batch, collate_fn=collate):
        for d in model.detect([im.to(device) for im in images]):
            d = {k: v.cpu() for k, v in d.items()}
            d = read_out(
                d, scorer, model.roi_heads.num_classes, model.num_seen, keep_unknown,
                unknown_over_known,
            )  # fmt: skip
            d["labels"] = lut[d["labels"]]
            out.append(d)
    return out


def exemplar_set(
    model: OpenWorldDetector,
    pool: DetectionSet,
    per_class: int,
    device: torch.device,
    batch: int,
) -> list[int]:
    """Pool indices of the class-balanced exemplar images (herding per seen class on the mean
    RoI feature of the class's boxes in each image); `pool` has model-space labels."""
    model.eval().to(device)
    feats: dict[int, list] = {}
    for images, targets, index in DataLoader(pool, batch, collate_fn=collate):
        keep = [i for i, t in enumerate(targets) if len(t["labels"])]
        if not keep:
            continue
        roi = model.gt_features(
            [images[i].to(device) for i in keep], _to([targets[i] for i in keep], device)
        )
        for i, f in zip(keep, roi):
            labels = targets[i]["labels"]
            for c in labels.unique().tolist():
                feats.setdefault(c, []).append(
                    (index[i], f[labels.to(f.device) == c].mean(0).cpu())
                )
    chosen = select_exemplars(feats, per_class)
    return sorted({i for idx in chosen.values() for i in idx})


@torch.no_grad()
def pseudo_label_previous(
    model: OpenWorldDetector,
    data: DetectionSet,
    num_previous: int,
    min_score: float,
    device: torch.device,
    batch: int,
) -> tuple[DetectionSet, int]:
    """`data` (model labels, only the new task's classes annotated) with the earlier classes'
    objects the model still finds added as annotations: its detections of classes
    1..`num_previous` scoring >= `min_score` that overlap no annotated box (IoU <= 0.5).
    Returns the new set and the number of boxes added.

    Why: a task's images annotate only its own classes (OWOD's protocol), so earlier-class
    objects in them are background to the RPN and the RoI head, and — having high objectness
    and no box — the very proposals auto-labelling picks as "unknown" (70% of the task-2 picks
    on the digit scenes). `model` is the previous task's, seeing only the earlier classes."""
    model.eval().to(device)
    seen = model.num_seen
    model.num_seen = num_previous  # the new classes' outputs are untrained: keep them masked
    targets, added = [], 0
    try:
        for images, tgts, _ in DataLoader(data, batch, collate_fn=collate):
            for d, t in zip(model.detect([im.to(device) for im in images]), tgts):
                d = {k: v.cpu() for k, v in d.items()}
                m = (d["labels"] >= 1) & (d["labels"] <= num_previous) & (d["scores"] >= min_score)
                boxes, labels = d["boxes"][m], d["labels"][m]
                if len(t["boxes"]) and len(boxes):
                    free = box_iou(boxes, t["boxes"].float()).amax(1) <= 0.5
                    boxes, labels = boxes[free], labels[free]
                added += len(boxes)
                targets.append(
                    {
                        "boxes": torch.cat([t["boxes"].float(), boxes]),
                        "labels": torch.cat([t["labels"], labels]),
                    }
                )
    finally:
        model.num_seen = seen
    return DetectionSet(data.images, targets, data.classes, data.names), added
