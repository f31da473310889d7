"""The discover stage's figures: a 2-D t-SNE of features (known classes, and the novel images
coloured by discovered class), and the class-count estimate's scores."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.manifold import TSNE

from ..plotting import save_figure


def embedding_figure(
    features: torch.Tensor,
    labels: torch.Tensor,
    is_novel: np.ndarray,
    discovered: np.ndarray,
    num_known: int,
    path: Path,
    seed: int = 0,
    max_points: int = 1500,
) -> None:
    """features [N, D], true model labels [N]; `is_novel` [N] bool; `discovered` [number of
    novel images] their discovered labels (k..k+n-1)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(features))[:max_points])
    xy = TSNE(2, init="pca", random_state=seed, perplexity=min(30, len(pick) - 1)).fit_transform(
        torch.nn.functional.normalize(features[pick].float(), dim=1).numpy()
    )
    is_novel = np.asarray(is_novel, bool)
    novel = is_novel[pick]
    cluster = np.full(len(features), -1)
    cluster[is_novel] = discovered
    cluster = cluster[pick]
    y = np.asarray(labels)[pick]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    ax = axes[0]
    ax.scatter(*xy[~novel].T, s=6, c="0.7", label="known classes")
    ax.scatter(*xy[novel].T, s=6, c="tab:red", label="novel classes")
    ax.set_title("known vs novel (truth)")
    ax.legend(markerscale=3)
    ax = axes[1]
    ax.scatter(*xy[~novel].T, s=6, c=y[~novel], cmap="Greys", vmin=-2, vmax=num_known)
    sc = ax.scatter(*xy[novel].T, s=6, c=cluster[novel], cmap="tab10")
    ax.set_title("novel images by discovered class (known in grey)")
    fig.colorbar(sc, ax=ax, label="discovered label")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def count_figure(
    scores: dict[int, float],
    chosen: int,
    truth: int | None,
    path: Path,
    extra: dict[str, dict[int, float]] | None = None,
) -> None:
    """The class-count estimate at a glance: each candidate count's score (e.g. the count
    heads' silhouette), the chosen count marked, and the truth where the run knows it; `extra`
    curves ({name: {count: value}}, e.g. the spectral gaps) on a second axis."""
    counts = sorted(scores)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    lines = ax.plot(
        counts,
        [scores[c] for c in counts],
        "o-",
        c="tab:blue",
        label="silhouette" if extra else "score",
    )
    lines += ax.plot(
        [chosen], [scores[chosen]], "o", ms=12, mfc="none", c="tab:red", label=f"chosen {chosen}"
    )
    if truth is not None:
        lines.append(ax.axvline(truth, ls="--", c="0.5", label=f"truth {truth}"))
    if extra:
        twin = ax.twinx()
        for (name, values), colour in zip(extra.items(), ("tab:green", "tab:purple")):
            c = sorted(values)
            lines += twin.plot(c, [values[i] for i in c], "s:", c=colour, label=name)
        twin.set_ylabel(", ".join(extra))
    ax.set_xticks(counts)
    ax.set_xlabel("candidate number of novel classes")
    ax.set_ylabel("silhouette" if extra else "score")
    ax.set_title("how many novel classes?")
    ax.legend(handles=lines, fontsize=8)
    save_figure(fig, path)
