"""Figures of the `detect` stage: detections drawn on images, OWOD metrics across tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from ..plotting import save_figure
from .datasets import DetectionSet
from .metrics import UNKNOWN


def plot_detections(
    data: DetectionSet, detections: Sequence[dict], path: Path, min_score: float = 0.3
) -> None:
    """Up to 6 images with their detections above `min_score`: known classes in green with
    the class name, "unknown" in red (dataset labels, -1 = unknown)."""
    n = min(6, len(data))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, i in zip(axes[0], range(n)):
        ax.imshow(data.load(i).permute(1, 2, 0).numpy())
        d = detections[i]
        for box, label, score in zip(d["boxes"], d["labels"], d["scores"]):
            if float(score) < min_score:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            unk = int(label) == UNKNOWN
            colour = "red" if unk else "lime"
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colour))
            name = "unknown" if unk else data.classes[int(label)]
            ax.text(x1, y1 - 1, f"{name} {float(score):.2f}", color=colour, fontsize=6)
        ax.set_title(data.names[i], fontsize=7)
        ax.axis("off")
    fig.suptitle("detections (green: known, red: unknown)", fontsize=9)
    save_figure(fig, path)


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
