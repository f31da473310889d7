"""What the discovery learners share: the optimiser, the mixing coefficient, a NaN guard."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models import Classifier
from ..training import warmup_cosine


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target[c] * log softmax(logits)[c] (target rows sum to 1)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class DiscoverModule(L.LightningModule):
    """A Classifier over known + novel outputs (labels 0..k-1 known, k..k+n-1 novel)."""

    def __init__(self, model: Classifier, opts, num_known: int) -> None:
        super().__init__()
        self.model, self.opts, self.num_known = model, opts, num_known
        self.beta = torch.distributions.Beta(opts.mix_alpha, opts.mix_alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, k + n] and the cosine [B, n] between features and the novel head's rows:
        UNO's Sinkhorn works on cosine similarities (its prototypes are normalised), and a
        linear head's logits are far larger, which would make every assignment one-hot."""
        f = self.model.forward_features(x)
        w = self.model.head.weight[self.num_known :]
        cos = F.normalize(f.detach(), dim=1) @ F.normalize(w.detach(), dim=1).T
        return self.model.forward_head(f), cos

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
