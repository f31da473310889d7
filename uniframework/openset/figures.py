"""Figures of the openset stage: energy histograms with the Weibull fits, ROC curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from ..plotting import save_figure
from .weibull import EnergyWeibullScorer


def energy_histogram(
    logits: torch.Tensor,
    is_unknown: torch.Tensor,
    weibull: EnergyWeibullScorer | None,
    temperature: float,
    path: Path,
) -> None:
    """Histogram of -E = T logsumexp(logits / T) for known vs unknown test images, with the
    two fitted Weibull densities (the quantity ORE fits)."""
    x = (temperature * torch.logsumexp(logits / temperature, 1)).numpy()
    u = is_unknown.numpy().astype(bool)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(x.min(), x.max(), 40)
    ax.hist(x[~u], bins, density=True, alpha=0.5, label="known (test)")
    ax.hist(x[u], bins, density=True, alpha=0.5, label="unknown (test)")
    if weibull is not None:
        grid = np.linspace(x.min(), x.max(), 400)
        ident = weibull.identifier
        for params, name in (
            (ident.known, "Weibull fit: known"),
            (ident.unknown, "Weibull fit: unknown"),
        ):
            if params is not None:
                ax.plot(grid, np.exp(params.logpdf(grid)), lw=2, label=name)
    ax.set_xlabel("-energy  (T · logsumexp(logits / T))")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Energy of known and unknown test images")
    save_figure(fig, path)


def roc_curves(scores: dict[str, torch.Tensor], is_unknown: torch.Tensor, path: Path) -> None:
    """ROC of every scorer (unknown = positive)."""
    u = is_unknown.numpy().astype(int)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(u, s.numpy())
        ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(u, s.numpy()):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate (knowns flagged)")
    ax.set_ylabel("true positive rate (unknowns caught)")
    ax.legend(fontsize=8, title="AUROC")
    ax.set_title("Unknown detection")
    save_figure(fig, path)
