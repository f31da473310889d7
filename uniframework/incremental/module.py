"""One incremental task as a LightningModule, and growing the classifier's head.

The module trains `model` (head already grown to every class seen so far) on one task's
loader; when the learner distils, the frozen previous model rides along (eval mode, no
gradient, outside the checkpoint: a resumed task rebuilds it from the previous task's file) and
is dropped with the module after the task.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..models import Classifier
from ..training import warmup_cosine
from .losses import icarl_loss, lwf_distillation


class IncrementalModule(L.LightningModule):
    """Cross-entropy (or iCaRL's BCE) on the classes seen so far, + the learner's distillation.

    distill: None; "lwf": the paper's L_new (cross-entropy over the new task's outputs, a batch
    of new-task images only) or, when exemplars are mixed in (`lwf_memory`), cross-entropy over
    every class, + distill_weight * LwF KD at `temperature` on the old logits; "icarl": sigmoid
    BCE, old-class targets = sigmoid of the old model's logits.
    """

    def __init__(
        self,
        model: Classifier,
        old_model: Classifier | None,
        distill: str | None,
        opts,
        lr: float,
    ) -> None:
        super().__init__()
        self.model, self.distill, self.opts, self.lr = model, distill, opts, lr
        # a plain list: the old model is neither trained, checkpointed nor counted by Lightning
        self._old = [old_model.eval().requires_grad_(False)] if old_model is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        logits = self.model(x)  # [N, C_seen]
        old_logits = None
        if self._old and self.distill is not None:
            old = self._old[0].to(x.device)  # a no-op after the first step
            with torch.no_grad():
                old_logits = old(x)  # [N, C_old]
        if self.distill == "icarl":
            loss = icarl_loss(logits, y, old_logits)
        elif self.distill == "lwf" and old_logits is not None and (y >= old_logits.shape[1]).all():
            # LwF's L_new on the new task's outputs only (its head in the paper), + L_old
            c_old = old_logits.shape[1]
            loss = F.cross_entropy(logits[:, c_old:], y - c_old)
            kd = lwf_distillation(logits[:, :c_old], old_logits, self.opts.temperature)
            self.log("train_distill_loss", kd, on_epoch=True, on_step=False)
            loss = loss + self.opts.distill_weight * kd
        else:
            loss = F.cross_entropy(logits, y)
            if self.distill == "lwf" and old_logits is not None:  # with exemplars: CE on all
                kd = lwf_distillation(
                    logits[:, : old_logits.shape[1]], old_logits, self.opts.temperature
                )
                self.log("train_distill_loss", kd, on_epoch=True, on_step=False)
                loss = loss + self.opts.distill_weight * kd
        if not torch.isfinite(loss):
            raise UserError(
                f"the incremental loss became {loss.item()} at step {self.global_step}: lower "
                "stages.incremental.lr or set trainer.gradient_clip_val"
            )
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        o = self.opts
        params = self.model.parameters()  # never the old model's
        if o.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(
                params, lr=self.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 0, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
