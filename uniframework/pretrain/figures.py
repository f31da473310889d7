"""Figures of the pretrain stage, per epoch.

- `ReconstructionFigures`: original / masked / reconstruction; the same images and the same
  masks every epoch (fixed seed), de-normalised to pixels, with the visible patches pasted back
  into the reconstruction (as in MAE's figures).
- `EpochCurves` (methods with `monitors`, i.e. iBOT): the k-NN accuracy of the exported encoder
  on a small fixed subset and the monitored metrics (iBOT: the teacher entropy) over epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..data import ImageSet, OpenWorldData, View
from ..io import load_matching
from ..plotting import save_figure
from .evaluation import backbone_features, knn_classify
from .module import Method
from .options import PretrainOptions

MASK_GREY = 0.5  # masked pixels drawn mid-grey
CURVE_TITLES = {
    "knn_acc": "k-NN accuracy (fixed subset)",
    "teacher_entropy": "teacher entropy (nats)",
}


def reconstruction_grid(
    original: torch.Tensor, masked: torch.Tensor, recon: torch.Tensor, path: Path, title: str
) -> None:
    """Three rows of images [N, 3, H, W] in [0, 1]: original, masked input, reconstruction."""
    n = len(original)
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.9), squeeze=False)
    for row, (name, imgs) in enumerate(
        [("original", original), ("masked", masked), ("reconstruction", recon)]
    ):
        for col in range(n):
            ax = axes[row][col]
            ax.imshow(imgs[col].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


class ReconstructionFigures(L.Callback):
    """Writes `out_dir/recon_epoch{N:03d}.png` (N = epochs done) on rank 0 after each epoch.

    images: normalised [3, H, W] tensors (the clean view); `base` gives mean / std to undo it.
    """

    def __init__(
        self,
        method: Method,
        images: Sequence[torch.Tensor],
        base: ImageSet,
        out_dir: Path,
        seed: int = 0,
    ) -> None:
        self.method, self.out_dir, self.seed = method, Path(out_dir), seed
        self.images = torch.stack(list(images))  # [N, 3, H, W]
        self.mean = torch.tensor(base.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(base.std).view(1, 3, 1, 1)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float().cpu() * self.std + self.mean).clamp(0, 1)

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        dtype = next(model.parameters()).dtype
        out = self.method.reconstruct(model, self.images.to(pl_module.device, dtype), self.seed)
        model.train(was_training)
        if out is None:
            return
        recon, mask = self._pixels(out[0]), out[1].float().cpu()
        original = self._pixels(self.images)
        masked = original * (1 - mask) + MASK_GREY * mask
        epoch = trainer.current_epoch + 1
        reconstruction_grid(
            original,
            masked,
            recon,
            self.out_dir / f"recon_epoch{epoch:03d}.png",
            f"{type(self.method).__name__}: epoch {epoch}",
        )


def curves_figure(history: dict[str, list[float]], path: Path, title: str) -> None:
    """One panel per series of `history` (all but `epoch`) against `history["epoch"]`."""
    names = [k for k in history if k != "epoch"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot(history["epoch"], history[name], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(CURVE_TITLES.get(name, name), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _subset(view: View, n: int) -> View:
    keep = np.linspace(0, len(view) - 1, min(n, len(view))).astype(int)  # fixed, spread out
    return View(view.base, view.indices[keep], view.labels[keep], view.transform)


class EpochCurves(L.Callback):
    """After each epoch, on rank 0: weighted k-NN accuracy of the encoder the method exports
    (iBOT: the teacher's), loaded into `backbone`, fitted on <= n_train labelled images and
    scored on <= n_test known test images (fixed subsets, clean views), and the epoch means of
    the method's `monitors` (iBOT: `teacher_entropy`); redraws `path`. The history travels in
    the checkpoint, so a resumed run draws every epoch."""

    def __init__(
        self,
        method: Method,
        backbone: torch.nn.Module,
        data: OpenWorldData,
        opts: PretrainOptions,
        path: Path,
        n_train: int = 500,
        n_test: int = 250,
    ) -> None:
        self.method, self.backbone, self.opts, self.path = method, backbone, opts, Path(path)
        self.train = data.loader(_subset(data.view("labelled"), n_train))
        self.test = data.loader(_subset(data.view("test_known"), n_test))
        self.num_classes = data.split.num_known
        self.history: dict[str, list[float]] = {
            k: [] for k in ("epoch", "knn_acc", *method.monitors)
        }

    @torch.no_grad()
    def knn_accuracy(self, device: torch.device) -> float:
        train_f, train_y = backbone_features(self.backbone, self.train, device)
        test_f, test_y = backbone_features(self.backbone, self.test, device)
        if not len(train_y) or not len(test_y):
            return math.nan
        o = self.opts
        pred = knn_classify(train_f, train_y, test_f, o.knn_k, o.knn_temperature, self.num_classes)
        return float((pred == test_y).float().mean())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        load_matching(self.backbone, self.method.encoder_state(pl_module.model), "encoder")
        last = trainer.callback_metrics  # this epoch's means
        self.history["epoch"].append(trainer.current_epoch + 1)
        self.history["knn_acc"].append(self.knn_accuracy(pl_module.device))
        for key in self.method.monitors:
            self.history[key].append(float(last[key]) if key in last else math.nan)
        curves_figure(self.history, self.path, f"{type(self.method).__name__}: per epoch")

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict["history"]
