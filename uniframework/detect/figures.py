"""Figures of the `detect` stage: detections drawn on images, OWOD metrics across tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
from torchvision.ops import batched_nms

from ..plotting import save_figure
from .datasets import DetectionSet
from .metrics import UNKNOWN


def plot_detections(
    data: DetectionSet,
    detections: Sequence[dict],
    path: Path,
    min_score: float = 0.3,
    unknown_classes: Sequence[int] = (),
) -> None:
    """Up to 6 images with their detections above `min_score`: known classes in green with
    the class name, "unknown" in red (dataset labels, -1 = unknown); ground-truth objects of
    `unknown_classes` (never known) get a dashed white outline, so a red box can be judged.
    The detector keeps a box per class (per-class NMS): here each object shows at most its best
    known box and its best unknown box (NMS at IoU 0.5 within each group)."""
    n = min(6, len(data))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, i in zip(axes[0], range(n)):
        ax.imshow(data.load(i).permute(1, 2, 0).numpy())
        for box, label in zip(data.targets[i]["boxes"], data.targets[i]["labels"]):
            if int(label) in unknown_classes:
                _box(ax, box, ec="white", lw=1, ls="--")
        d = _one_per_object(detections[i], min_score)
        for box, label, score in zip(d["boxes"], d["labels"], d["scores"]):
            unk = int(label) == UNKNOWN
            colour = "red" if unk else "lime"
            _box(ax, box, ec=colour, lw=1.5)
            name = "unknown" if unk else data.classes[int(label)]
            tag = {"fc": colour, "ec": "none", "pad": 0.8, "alpha": 0.85}
            text = f"{name} {float(score):.2f}"
            ax.text(float(box[0]), float(box[1]) - 1, text, fontsize=7, bbox=tag, va="bottom",
                    color="white" if unk else "black")  # fmt: skip
        ax.set_title(data.names[i], fontsize=7)
        ax.axis("off")
    fig.suptitle("detections (green: known, red: unknown; dashed: a never-known digit)", fontsize=9)
    save_figure(fig, path)


def _box(ax: plt.Axes, box, **style) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))


def _one_per_object(d: dict, min_score: float) -> dict:
    """Detections above `min_score`, NMS at IoU 0.5 among the known and among the unknown ones."""
    keep = d["scores"] >= min_score
    d = {k: d[k][keep] for k in ("boxes", "labels", "scores")}
    group = (d["labels"] == UNKNOWN).long()  # batched_nms: boxes suppress within their group
    kept = batched_nms(d["boxes"].float(), d["scores"].float(), group, 0.5)
    return {k: v[kept] for k, v in d.items()}


def plot_owod_metrics(per_task: Sequence[dict[str, float]], path: Path) -> None:
    """Wilderness impact and U-Recall@50 (and known mAP@50) after each task."""
    tasks = list(range(1, len(per_task) + 1))
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    for ax, key, title in zip(
        axes,
        ("wi", "u_recall50", "map50_all"),
        ("wilderness impact (lower is better)", "U-Recall@50", "known mAP@50"),
    ):
        ax.plot(tasks, [m[key] for m in per_task], marker="o")
        ax.set_xticks(tasks)
        ax.set_xlabel("task")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
