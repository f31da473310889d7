"""Reconstruction figures of the pretrain stage: original / masked / reconstruction, per epoch.

The same images and the same masks every epoch (fixed seed), de-normalised to pixels, with the
visible patches pasted back into the reconstruction (as in MAE's figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import lightning as L  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..data import ImageSet  # noqa: E402
from ..io import atomic_write  # noqa: E402
from .module import Method  # noqa: E402

MASK_GREY = 0.5  # masked pixels drawn mid-grey


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
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


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
