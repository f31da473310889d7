"""What the discovery learners share: the optimiser, the mixing coefficient, a NaN guard."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models import Classifier
from ..training import warmup_cosine
from .sinkhorn import sinkhorn_knopp


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target[c] * log softmax(logits)[c] (target rows sum to 1)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class DiscoverModule(L.LightningModule):
    """A Classifier over known + novel outputs (labels 0..k-1 known, k..k+n-1 novel)."""

    def __init__(self, model: Classifier, opts, num_known: int) -> None:
        super().__init__()
        self.model, self.opts, self.num_known = model, opts, num_known
        self.beta = torch.distributions.Beta(opts.mix_alpha, opts.mix_alpha)
        self.count_heads = None  # `add_count_heads`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, k + n] and the cosine [B, n] between features and the novel head's rows:
        UNO's Sinkhorn works on cosine similarities (its prototypes are normalised), and a
        linear head's logits are far larger, which would make every assignment one-hot."""
        logits, cos, _ = self.views_and_features(x)
        return logits, cos

    def views_and_features(self, x: torch.Tensor):
        """`views(x)` and the features [B, D] they came from."""
        f = self.model.forward_features(x)
        return self.model.forward_head(f), _cosine(f, self.model.head.weight[self.num_known :]), f

    def add_overcluster_head(self) -> None:
        """UNO's over-clustering head (Fini et al. 2021, Sec. 3.3), when `opts.overcluster` > 0:
        `overcluster` x n extra novel outputs, trained beside the novel head by
        `overcluster_loss` and dropped after training (not part of `self.model`, so never saved
        with it). With room for several clusters per class it need not merge two classes,
        which gives the shared backbone a reason to keep them apart."""
        factor = int(getattr(self.opts, "overcluster", 0))
        n = self.model.num_classes - self.num_known
        self.over_head = self._extra_head(factor * n) if factor > 0 else None

    def add_count_heads(self, counts) -> None:
        """One extra head per candidate novel-class count c in `counts` (c outputs each), all
        trained beside the novel head by the same swapped prediction of their own Sinkhorn
        assignments (UNO's multi-head, Fini et al. 2021 Sec. 3.3, with a different size per
        head); dropped after training like the over-clustering head. Each head is forced to
        share the pool out equally among its c clusters, so only a head with the right c can
        follow the classes without splitting or merging one: the stage compares the heads'
        partitions (`clustering.head_partitions`, `clustering.count_by_consensus`)."""
        self.count_heads = nn.ModuleList(self._extra_head(c) for c in counts)

    def _extra_head(self, rows: int) -> nn.Linear:
        """A linear head of `rows` outputs: random unit rows at the known rows' mean norm (so
        its logits start on the known ones' scale), biases at the known biases' mean."""
        m, k = self.model, self.num_known
        head = nn.Linear(m.feature_dim, rows)
        with torch.no_grad():
            unit = F.normalize(torch.randn(rows, m.feature_dim), dim=1)
            head.weight.copy_(unit * m.head.weight[:k].norm(dim=1).mean())
            head.bias.fill_(float(m.head.bias[:k].mean()))
        return head

    def overcluster_loss(self, f1, f2, known1, known2) -> torch.Tensor:
        """UNO's swapped prediction on the over-clustering outputs of two views' features
        f1, f2 [B, D] (`swapped_head_loss` with the over-clustering head). UNO also gives the
        labelled images their one-hot label over these logits; here the labelled images are
        trained through the main head only."""
        return self.swapped_head_loss(self.over_head, f1, f2, known1, known2)

    def swapped_head_loss(self, head: nn.Linear, f1, f2, known1, known2) -> torch.Tensor:
        """Swapped prediction through an extra `head` of c outputs: logits [known logits [B, k]
        | head(f) [B, c]], each view's target the other view's Sinkhorn assignment over the c
        outputs (no known mass)."""
        eps = self.opts.sinkhorn_epsilon
        q1 = sinkhorn_knopp(_cosine(f1, head.weight), eps)  # [B, c] each view's assignment
        q2 = sinkhorn_knopp(_cosine(f2, head.weight), eps)
        zeros = known1.new_zeros(len(known1), known1.shape[1])
        l1, l2 = torch.cat([known1, head(f1)], 1), torch.cat([known2, head(f2)], 1)
        return 0.5 * (
            soft_cross_entropy(l1, torch.cat([zeros, q2], 1))
            + soft_cross_entropy(l2, torch.cat([zeros, q1], 1))
        )

    def extra_head_losses(self, f1, f2, known1, known2) -> torch.Tensor | float:
        """The over-clustering term plus the mean of the count heads' terms (each logged), or
        0 when neither head is there. f1, f2 [B, D]: two views' features; known1, known2
        [B, k]: their known logits."""
        loss = 0.0
        if self.over_head is not None:
            over = self.overcluster_loss(f1, f2, known1, known2)
            self.log("train_overcluster_loss", over, on_epoch=True, on_step=False)
            loss = loss + over
        heads = self.count_heads
        if heads:  # UNO averages its heads' losses
            count = sum(self.swapped_head_loss(h, f1, f2, known1, known2) for h in heads)
            count = count / len(heads)
            self.log("train_count_heads_loss", count, on_epoch=True, on_step=False)
            loss = loss + count
        return loss

    def check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(loss):
            raise UserError(
                f"the discover loss became {loss.item()} at step {self.global_step}: lower "
                "stages.discover.lr or set trainer.gradient_clip_val"
            )
        return loss

    def configure_optimizers(self):
        o = self.opts
        opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(o.warmup_epochs * total / max(1, self.trainer.max_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _cosine(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[B, D] features, [C, D] head rows -> [B, C] cosine similarities, detached."""
    return F.normalize(features.detach(), dim=1) @ F.normalize(rows.detach(), dim=1).T
