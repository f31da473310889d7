"""Generalized Category Discovery (Vaze et al., CVPR 2022, arXiv 2201.02609): representation
learning.

Every image of the batch, labelled or not, is seen in two augmented views. The backbone's
features go through a projection head to L2-normalised projections `z`, trained with

    loss = (1 - lam) * L_unsup + lam * L_sup

- `L_unsup`: InfoNCE (SimCLR's NT-Xent) over all 2N views of the N images: each view's positive
  is the other view of its image, every other view of the batch is a negative;
- `L_sup`: supervised contrastive loss (SupCon, Khosla et al. 2020) over the 2L views of the L
  labelled images: every other view of the same class is a positive.
Afterwards the projection head is thrown away and the *backbone* features are clustered
(semi-supervised k-means, `clustering.semi_supervised_kmeans`); this module only learns them,
and `centre_head` turns the resulting centres into the classifier's head.

What follows the paper / official code (github.com/sgvaze/generalized-category-discovery,
methods/contrastive_training/contrastive_training.py, "official" below):
- lam = `gcd_sup_weight` = 0.35 (paper Sec. 4; bash_scripts/contrastive_train.sh
  `--sup_con_weight 0.35`);
- InfoNCE temperature `gcd_temperature` = 1.0 (official `--temperature` default, which the
  training script leaves as is); SupCon temperature `gcd_sup_temperature` = 0.07 (official
  `SupConLoss()` defaults, temperature = base_temperature = 0.07, so no extra scale);
- both losses average over every view as an anchor (SupCon's `contrast_mode='all'`); an
  anchor is never its own negative; the unsupervised loss runs on labelled images too
  (`contrast_unlabel_only` False);
- the head's shape (official `DINOHead`, nlayers=3, no BatchNorm): Linear(D, H) - GELU -
  Linear(H, H) - GELU - Linear(H, 256), L2-normalise, a bias-free linear layer with unit-norm
  rows (weight norm with g fixed at 1) to the output dimension, then L2-normalise again;
  truncated-normal (std 0.02) init of the MLP, zero biases;
- the backbone features enter the head *un-normalised* (official: `projection_head(model(x))`);
  they are normalised only for k-means;
- the batch holds as many labelled as unlabelled images (the official sampler balances them
  in expectation; here the stage's two loaders give equal batch sizes).

What is scaled down or changed, and why:
- head sizes: official H = 2048, output 65536 (a ViT-B/16's 768-d features, 16.8 M parameters
  in the last layer alone); defaults here `gcd_hidden_dim` = 512 and `gcd_proj_dim` = 256 (256
  bottleneck), sized for the framework's small CPU backbones (resnet_tiny: 256-d features) —
  set 2048 / 65536 for the official head;
- what is fine-tuned: official = only the last transformer block of a DINO ViT-B/16 (frozen
  otherwise) + the head; here the whole backbone + the head, since the backbones are generic
  (no common notion of "last block") and usually small models from the supervised stage. The
  classifier's linear head gets no gradient and is left as it was;
- optimiser: official SGD (momentum 0.9, lr 0.1, weight decay 5e-5, 200 epochs, cosine to
  lr / 1000, batch 128); here the stage's AdamW (`lr`, `weight_decay`) with linear warm-up
  (`warmup_epochs`) and cosine decay to 0 (`DiscoverModule.configure_optimizers`), like the
  other discovery learners, whose option defaults are AdamW-scale.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import Classifier
from .module import DiscoverModule


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent on normalised projections of two views z1, z2 [B, D]: mean over the 2B
    anchors of -log softmax over the 2B - 1 other views, at the anchor's other view."""
    b = len(z1)
    z = torch.cat([z1, z2])  # [2B, D]; view 1 of image i at i, view 2 at B + i
    sim = z @ z.T / temperature  # [2B, 2B]
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))  # an anchor is not its own negative
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)  # [2B]
    return F.cross_entropy(sim, positive)


def supcon_loss(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) on normalised projections of two
    views z1, z2 [B, D] with labels [B]: for each of the 2B anchors, minus the mean over its
    positives (the other views of its class, its own other view included) of the log softmax
    over the 2B - 1 other views; averaged over the anchors."""
    b = len(z1)
    if b == 0:
        return z1.sum() * 0.0
    z, y = torch.cat([z1, z2]), torch.cat([labels, labels])  # [2B, D], [2B]
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = (z @ z.T / temperature).masked_fill(eye, float("-inf"))  # [2B, 2B]
    log_prob = F.log_softmax(sim, dim=1).masked_fill(eye, 0.0)  # the -inf diagonal -> 0
    positives = (y[:, None] == y[None, :]) & ~eye  # [2B, 2B]; >= 1 per row (the other view)
    per_anchor = (log_prob * positives).sum(1) / positives.sum(1)  # [2B]
    return -per_anchor.mean()


class ProjectionHead(nn.Module):
    """GCD's projection head (DINO's head, 3 layers): features [N, D] -> z [N, out_dim], with
    unit norm. MLP D -> hidden -> hidden -> bottleneck (GELU, no BatchNorm), L2-normalise, then
    a bias-free linear layer whose rows are kept at unit norm (weight norm, g = 1)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last = nn.Linear(bottleneck_dim, out_dim, bias=False)  # default init, as DINO

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.mlp(features), dim=1)  # [N, bottleneck]
        z = F.linear(h, F.normalize(self.last.weight, dim=1))  # [N, out_dim], unit-norm rows
        return F.normalize(z, dim=1)


def simclr_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR's projection head (Chen et al. 2020): Linear - BatchNorm - ReLU - Linear; its
    output is L2-normalised by the caller. Used to train a backbone from scratch with SGD: the
    DINO head above, built for AdamW, collapses there (its tiny-init MLP feeds an L2
    normalisation, whose gradient scales with 1 / ||h||; measured: every projection equal
    within 5 SGD steps at lr 0.05, InfoNCE stuck at log(2B - 1))."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def centre_head(model: Classifier, centres: torch.Tensor) -> Classifier:
    """`model` (in place) with a fresh head over the cluster centres [C, D] (e.g. semi-supervised
    k-means' on the fine-tuned features: k known, then the novel ones): rows = the normalised
    centres scaled to the old rows' mean norm, zero biases, so that argmax of the logits is the
    centre nearest in cosine to the features (the old known rows no longer fit the fine-tuned
    backbone)."""
    old = model.head
    head = nn.Linear(old.in_features, len(centres)).to(old.weight.device)
    with torch.no_grad():
        rows = F.normalize(centres.float().to(old.weight.device), dim=1)
        head.weight.copy_(rows * old.weight.norm(dim=1).mean())
        head.bias.zero_()
    model.head = head
    return model


class GCDModule(DiscoverModule):
    """GCD's contrastive fine-tuning of `model.backbone` through a projection head.

    Batches as `UNOModule`: {"labelled": (x1, x2, y, index), "pool": (x1, x2, _, index)}, two
    views [B, 3, S, S] of each image (`uno.TwoViews`), known labels y in 0..k-1 [B]; the pool's
    labels are not used. Logs `train_unsup_loss`, `train_sup_loss`, `train_loss`.
    """

    def __init__(self, model: Classifier, opts, num_known: int) -> None:
        super().__init__(model, opts, num_known)
        self.sup_weight = float(getattr(opts, "gcd_sup_weight", 0.35))
        self.temperature = float(getattr(opts, "gcd_temperature", 1.0))
        self.sup_temperature = float(getattr(opts, "gcd_sup_temperature", 0.07))
        hidden = int(getattr(opts, "gcd_hidden_dim", 512))
        out = int(getattr(opts, "gcd_proj_dim", 256))
        self.projector = ProjectionHead(model.feature_dim, hidden, out)
        # GCD's losses never read the classifier's head (the fit ends with a new one over the
        # cluster centres): frozen, so DDP does not wait for its gradients
        model.head.requires_grad_(False)

    def losses(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, unsupervised, supervised) loss of a batch."""
        xl1, xl2, yl, _ = batch["labelled"]
        xu1, xu2, _, _ = batch["pool"]
        n, nl = len(xl1) + len(xu1), len(xl1)
        # one pass over all 2N views (BatchNorm sees the whole batch, as in the official code)
        x = torch.cat([xl1, xu1, xl2, xu2])  # [2N, 3, S, S]
        z = self.projector(self.model.forward_features(x))  # [2N, P], unit norm
        z1, z2 = z[:n], z[n:]  # [N, P] each; the labelled images first
        unsup = info_nce_loss(z1, z2, self.temperature)
        sup = supcon_loss(z1[:nl], z2[:nl], yl, self.sup_temperature)
        return (1 - self.sup_weight) * unsup + self.sup_weight * sup, unsup, sup

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, unsup, sup = self.losses(batch)
        self.log("train_unsup_loss", unsup, on_epoch=True, on_step=False)
        self.log("train_sup_loss", sup, on_epoch=True, on_step=False)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return self.check_finite(loss)
