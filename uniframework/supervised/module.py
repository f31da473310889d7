"""Supervised training of the classifier on the known, labelled split (a LightningModule)."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field
from torchmetrics.classification import MulticlassAccuracy

from ..config import Section
from ..errors import UserError
from ..models import Classifier
from ..training import warmup_cosine


class SupervisedOptions(Section):
    """Options of the `supervised` stage."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    max_epochs: int | None = Field(None, ge=1)  # None = trainer.max_epochs


class SupervisedModule(L.LightningModule):
    """Cross-entropy on known labels; torchmetrics accuracy; warm-up + cosine LR per step."""

    def __init__(self, model: Classifier, opts: SupervisedOptions) -> None:
        super().__init__()
        self.model, self.opts = model, opts
        self.train_acc = MulticlassAccuracy(model.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(model.num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.opts.label_smoothing)
        if not torch.isfinite(loss):
            raise UserError(
                f"the supervised loss became {loss.item()} at step {self.global_step}: lower "
                "stages.supervised.lr or set trainer.gradient_clip_val"
            )
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        self.log("train_acc", self.train_acc, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        logits = self.model(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        o = self.opts
        if o.optimizer == "adamw":
            opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(
                self.parameters(),
                lr=o.lr,
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                nesterov=True,
            )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(o.warmup_epochs * total / max(1, self.trainer.max_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
