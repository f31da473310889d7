"""The `sinkhorn` discovery baseline: a UNO-style head (Fini et al., ICCV 2021).

Every image is seen in two augmented views. Labelled images get their one-hot known label over
the known + novel outputs; for an unlabelled image, Sinkhorn-Knopp turns each view's (detached)
novel logits into an equipartitioned soft assignment `q`, and each view is trained to predict
the *other* view's `q` (swapped prediction). One head of n novel outputs (UNO's multi-head is
left out), plus UNO's over-clustering head when `overcluster` > 0 and the count heads of
`estimate_on: heads` (`module.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.views import BatchView
from .module import DiscoverModule, soft_cross_entropy
from .sinkhorn import sinkhorn_knopp


class TwoViews(torch.utils.data.Dataset):
    """Wraps a View: `(view1, view2, label, index)`, two independent augmentations."""

    def __init__(self, view) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int):
        j = int(self.view.indices[i])
        image = self.view.base.load(j)
        return self.view.transform(image), self.view.transform(image), int(self.view.labels[i]), j


class BatchTwoViews(TwoViews):
    """TwoViews of a `BatchView`, read a batch at a time: `(x1, x2, labels, indices)` collated,
    each view an independent whole-batch augmentation of the same images."""

    def __getitems__(self, positions: list[int]):
        x1, labels, index = self.view.__getitems__(positions)
        x2, _, _ = self.view.__getitems__(positions)
        return x1, x2, labels, index


def two_views(view) -> TwoViews:
    """`(view1, view2, label, index)` items of `view`, batched when the view is."""
    return BatchTwoViews(view) if isinstance(view, BatchView) else TwoViews(view)


class UNOModule(DiscoverModule):
    """Cross-entropy on labelled views + swapped prediction of Sinkhorn targets on unlabelled."""

    def __init__(self, model, opts, num_known: int) -> None:
        super().__init__(model, opts, num_known)
        self.add_overcluster_head()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        o, k = self.opts, self.num_known
        xl1, xl2, yl, _ = batch["labelled"]
        xu1, xu2, _, _ = batch["pool"]
        loss = 0.5 * (F.cross_entropy(self.model(xl1), yl) + F.cross_entropy(self.model(xl2), yl))
        lu1, c1, f1 = self.views_and_features(xu1)  # [B, k + n], [B, n], [B, D]
        lu2, c2, f2 = self.views_and_features(xu2)
        zeros = lu1.new_zeros(len(lu1), k)
        q1 = torch.cat([zeros, sinkhorn_knopp(c1, o.sinkhorn_epsilon)], 1)
        q2 = torch.cat([zeros, sinkhorn_knopp(c2, o.sinkhorn_epsilon)], 1)
        swapped = 0.5 * (soft_cross_entropy(lu1, q2) + soft_cross_entropy(lu2, q1))
        self.log("train_swapped_loss", swapped, on_epoch=True, on_step=False)
        loss = loss + swapped
        loss = loss + self.extra_head_losses(f1, f2, lu1[:, :k], lu2[:, :k])
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return self.check_finite(loss)
