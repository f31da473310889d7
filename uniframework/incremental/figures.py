"""Figures of the incremental stage: accuracy-vs-task curves and the accuracy matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plotting import plt, save_figure


def accuracy_curves(curves: dict[str, list[float]], classes_seen: list[int], path: Path) -> None:
    """One line per learner (and per classifier, e.g. "icarl (NME)"): accuracy on every class
    seen so far after each task."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    learners = list(dict.fromkeys(name.removesuffix(" (NME)") for name in curves))
    for name, acc in curves.items():
        base = name.removesuffix(" (NME)")  # a learner's NME line shares its colour, dashed
        ax.plot(
            classes_seen,
            np.asarray(acc) * 100,
            marker="o",
            label=name,
            color=f"C{learners.index(base)}",
            linestyle="--" if base != name else "-",
        )
    ax.set_xlabel("classes seen")
    ax.set_ylabel("accuracy on classes seen (%)")
    ax.set_xticks(classes_seen)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def matrix_heatmap(matrix: np.ndarray, title: str, path: Path) -> None:
    """A[t, j] as a heatmap: rows = after task t, columns = task j's classes."""
    a = np.asarray(matrix, float) * 100
    t = a.shape[0]
    fig, ax = plt.subplots(figsize=(2.2 + 0.7 * t, 1.0 + 0.6 * t))
    im = ax.imshow(np.ma.masked_invalid(a), vmin=0, vmax=100, cmap="viridis")
    for i in range(t):
        for j in range(i + 1):
            ax.text(
                j,
                i,
                f"{a[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if a[i, j] < 60 else "black",
            )
    ax.set_xticks(range(t), [f"task {j}" for j in range(t)], fontsize=8)
    ax.set_yticks(range(t), [f"after {i}" for i in range(t)], fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="accuracy (%)")
    save_figure(fig, path)
