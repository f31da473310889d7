"""Supervised training of the classifier on the known, labelled split (a LightningModule).

Two ORE components (Joseph et al., CVPR 2021) are options:
- `contrastive`: contrastive clustering of the penultimate feature around class prototypes
  (`prototypes.py`): a feature store fills from the first step; from `contrastive_start_epoch`
  the prototypes start as the store means and then follow them with momentum, and the hinge
  loss (weight `contrastive_weight`) is added. Where this follows ORE and where not (details in
  `prototypes.py`):
  - update interval: by default the paper's ratio, every `prototype_every_fraction` (OWOD: 3000
    of 18,000 iterations, 1/6) of the run's steps — about five updates, as in OWOD's first task;
    its absolute 3,000 would mean no update in a run of a few hundred steps. `prototype_every`
    (steps) overrides it (10 was our earlier default).
  - feature space: by default the paper's raw features with margin 10
    (`contrastive_features: raw`), the loss measured on our ResNets; `normalised` L2-normalises
    features and prototypes in the loss (margin 1.0 on the unit sphere, `contrastive_margin`
    None = the space's default), which keeps the loss meaningful on a ViT, whose feature norms
    dwarf the margin 10 (a 5-epoch ViT from 5 MAE epochs trained at chance with weight 0.1; the
    demo-mae ViT trains as well as without the loss: BENCHMARKS.md "Faithfulness", item 7).
- `unknown_class`: one extra output, "unknown" (label = num_known). Each step also draws a batch
  from the unlabelled pool; the `unknown_topk` samples the model judges least known (highest
  energy over the known logits, or farthest from every prototype) are trained as unknown —
  ORE's auto-labelling, transplanted from RPN proposals to the unlabelled pool
  (`auto_label: topk`). On a pool that mixes known and novel images, `auto_label:
  known_weibull` instead trains as unknown the pool images a Weibull on the held-out knowns finds
  unlikely, re-selected once per epoch from a frozen snapshot (`unknown_selection.py`).
- `energy_margins`: energy-bounded learning (Liu et al. 2020, `energy_bounded.py`) on the same
  auto-labelled unknowns — with or without the extra output, from the same pool batch.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torchmetrics.classification import MulticlassAccuracy

from ..data.augment import batch_colour
from ..discover.gcd import info_nce_loss, simclr_head, supcon_loss
from ..errors import UserError
from ..models import Classifier
from ..openset.scores import energy_score
from ..training import planned_epochs, warmup_cosine
from .energy_bounded import energy_margin_loss
from .ore_options import OreOptions
from .progressive import ProgressiveOptions, mixup, parse_progressive
from .prototypes import (
    FeatureStore,
    contrastive_clustering_loss,
    prototype_interval,
    update_prototypes,
)
from .simgcd import PrototypeHead, simgcd_loss, teacher_temperature


class SupervisedOptions(OreOptions):
    """Options of the `supervised` stage (ORE's shared options: `ore_options.py`)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # layer-wise lr decay (BEiT / MAE fine-tuning: 0.65-0.75): block i of L gets lr*decay^(L-i);
    # norms, biases and position / class tokens get no weight decay. None = one lr for all
    layer_decay: float | None = Field(None, gt=0, le=1)
    max_epochs: int | None = Field(None, ge=1)  # None = trainer.max_epochs
    # which epoch's weights the stage keeps: the best on the held-out knowns by accuracy or by
    # loss (finer than accuracy on a small val set, where ties keep the first epoch), or the last
    keep: Literal["val_acc", "val_loss", "last"] = "val_acc"
    # ORE contrastive clustering (paper: margin 10, queue 20 per class, momentum 0.99)
    contrastive: bool = False
    contrastive_start_epoch: int = Field(1, ge=0)
    # ORE auto-labelled unknown class
    unknown_class: bool = False
    unknown_by: Literal["energy", "prototype"] = "energy"
    unknown_weight: float = Field(1.0, ge=0)
    # which pool images are the unknowns: per batch the `unknown_topk` least known (ORE), or per
    # epoch those a Weibull on the held-out knowns finds unlikely, CDF < `unknown_alpha`
    auto_label: Literal["topk", "known_weibull"] = "topk"
    unknown_alpha: float = Field(0.05, gt=0, lt=1)
    unknown_start_epoch: int = Field(1, ge=0)  # known_weibull: first epoch with unknowns
    # energy-bounded learning (Liu et al. 2020, energy_bounded.py) on the same auto-labelled
    # unknowns: [m_in, m_out] margins on the free energy (T = 1), weight λ (paper 0.1)
    energy_margins: tuple[float, float] | None = None
    energy_weight: float = Field(0.1, ge=0)
    # EfficientNetV2 progressive learning (progressive.py): `true` or a mapping; off by default
    progressive: ProgressiveOptions | None = None
    # lr after the warm-up: cosine to 0, or linear to 0 (Page's / OneCycle's triangle)
    schedule: Literal["cosine", "linear"] = "cosine"
    batch_size: int | None = Field(None, ge=1)  # training batches; None = data.batch_size
    # unlabelled images beside each labelled batch (FixMatch's mu x B); None = batch_size. With
    # gcd_weight an epoch is one pass over the labelled images, so a larger one shows the pool
    # more often; there a size that runs the pool out first is refused
    pool_batch_size: int | None = Field(None, ge=1)
    # GCD's representation loss (Vaze et al. 2022, `discover/gcd.py`) from the first epoch, on
    # two views of every image, labelled and unlabelled: loss = CE + gcd_weight * ((1 - lam)
    # InfoNCE + lam SupCon), through SimCLR's projection head, thrown away afterwards. 0 = off
    gcd_weight: float = Field(0.0, ge=0)
    gcd_sup_weight: float = Field(0.35, ge=0, le=1)  # lam (GCD: 0.35)
    # InfoNCE temperature: SimCLR's CIFAR value for a network trained from scratch (GCD's 1.0
    # is for fine-tuning the last block of a DINO ViT)
    gcd_temperature: float = Field(0.5, gt=0)
    gcd_sup_temperature: float = Field(0.07, gt=0)  # SupCon's (GCD: 0.07)
    gcd_proj_dim: int = Field(128, ge=1)  # projection output (SimCLR: 128)
    gcd_hidden_dim: int = Field(512, ge=1)  # projection MLP width
    colour_strength: float = Field(0.4, ge=0, lt=1)  # the views' colour jitter (SimCLR CIFAR)
    # SimGCD's parametric classifier (Wen et al. 2023, `simgcd.py`) on the same two views: loss
    # += simgcd_weight * ((1 - lam) (self-distillation - eps * mean entropy) + lam CE), lam =
    # gcd_sup_weight, over prototypes for the known classes and `simgcd_new_classes` new ones (a
    # prior: None = as many as the known; the count is still estimated by discover). Needs
    # gcd_weight > 0 (its views). 0 = off
    simgcd_weight: float = Field(0.0, ge=0)
    simgcd_new_classes: int | None = Field(None, ge=1)
    simgcd_memax_weight: float = Field(2.0, ge=0)  # eps (SimGCD: 2)
    simgcd_teacher_temp: tuple[float, float] = (0.07, 0.04)  # warm-up start, end (SimGCD)
    simgcd_teacher_warmup: float = Field(0.15, ge=0, le=1)  # share of epochs (SimGCD: 30/200)

    @property
    def trains_unknowns(self) -> bool:
        """Whether training auto-labels pool images as unknown (unknown class, energy)."""
        return self.unknown_class or self.energy_margins is not None

    @property
    def uses_pool(self) -> bool:
        """Whether training draws pool batches (auto-labelled unknowns, GCD's views)."""
        return self.trains_unknowns or self.gcd_weight > 0

    @model_validator(mode="after")
    def _simgcd_needs_views(self):
        if self.simgcd_weight > 0 and self.gcd_weight == 0:
            raise ValueError(
                "simgcd_weight trains on GCD's two views of every image: set gcd_weight > 0 "
                "(e.g. 1.0) or simgcd_weight: 0"
            )
        return self

    @field_validator("energy_margins")
    @classmethod
    def _margins_ordered(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"energy_margins [m_in, m_out] needs m_in < m_out, got {list(v)}")
        return v

    @field_validator("progressive", mode="before")
    @classmethod
    def _progressive_on_off(cls, v):
        return parse_progressive(v)


def least_known(
    features: torch.Tensor, known_logits: torch.Tensor, k: int, by: str, prototypes=None
) -> torch.Tensor:
    """Indices of the k samples judged least known: highest energy, or farthest prototype."""
    if by == "prototype" and prototypes is not None:
        score = torch.cdist(features.float(), prototypes.float()).min(1).values
    else:
        score = energy_score(known_logits.float())
    return score.topk(min(k, len(score))).indices


class SupervisedModule(L.LightningModule):
    """Cross-entropy on known labels (+ ORE options); torchmetrics accuracy; warm-up + cosine."""

    def __init__(
        self, model: Classifier, opts: SupervisedOptions, num_known: int, norm=None
    ) -> None:
        """`norm`: the dataset's (mean, std), which GCD's colour jitter needs."""
        super().__init__()
        self.model, self.opts, self.num_known = model, opts, num_known
        if opts.gcd_weight > 0:
            mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in norm)
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)
            self.projector = simclr_head(model.feature_dim, opts.gcd_hidden_dim, opts.gcd_proj_dim)
        if opts.simgcd_weight > 0:  # known + new prototypes, thrown away after the stage
            new = opts.simgcd_new_classes or num_known
            self.prototype_head = PrototypeHead(model.feature_dim, num_known + new)
        self.train_acc = MulticlassAccuracy(model.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(model.num_classes, average="micro")
        self.mixup_alpha = 0.0  # set per epoch by progressive learning
        self.selected: torch.Tensor | None = None  # known_weibull: [train size] bool, per epoch
        self.picked: list[torch.Tensor] = []  # dataset indices trained as unknown this epoch
        if opts.contrastive or opts.unknown_by == "prototype":
            self.store = FeatureStore(num_known, model.feature_dim, opts.store_size)
            self.register_buffer("prototypes", torch.zeros(num_known, model.feature_dim))
            self.register_buffer("prototypes_ready", torch.tensor(False))
            self.prototype_interval = opts.prototype_every or 1  # set from the run's length

    def on_train_start(self) -> None:
        if hasattr(self, "store"):  # the run's length is known once it trains
            total = int(self.trainer.estimated_stepping_batches)
            o = self.opts
            self.prototype_interval = prototype_interval(
                total, o.prototype_every, o.prototype_every_fraction
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _prototype_step(self, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Fill the store; update prototypes (all ranks alike); the clustering loss once live."""
        self.store.update(features.detach(), y)
        if self.current_epoch < self.opts.contrastive_start_epoch:
            return None
        if self.global_step % self.prototype_interval == 0 or not self.prototypes_ready:
            means, valid = self.store.means(sync=True)  # all-reduced under DDP
            momentum = self.opts.prototype_momentum if self.prototypes_ready else 0.0
            self.prototypes.copy_(update_prototypes(self.prototypes, means, momentum, valid))
            self.prototypes_ready.fill_(True)
        if not self.opts.contrastive:
            return None
        normalise = self.opts.contrastive_features == "normalised"
        return contrastive_clustering_loss(
            features, y, self.prototypes, self.opts.margin, normalise=normalise
        )

    def _gcd_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """GCD's loss (and SimGCD's, if on) on two colour-jittered views of the labelled and the
        pool images, one backbone pass over all of them (BatchNorm sees the whole batch):
        (gcd_weight * GCD + simgcd_weight * SimGCD, the labelled images' first-view features
        [L, D], their labels [L], the pool's first view)."""
        o = self.opts
        xl1, xl2, y, _ = batch["labelled"]
        xu1, xu2, _, _ = batch["pool"]
        views = [
            batch_colour(v, self.mean, self.std, o.colour_strength) for v in (xl1, xu1, xl2, xu2)
        ]
        features = self.model.forward_features(torch.cat(views))  # [2N, D]
        nl, n = len(xl1), len(xl1) + len(xu1)
        z = F.normalize(self.projector(features), dim=1)  # [2N, P]
        unsup = info_nce_loss(z[:n], z[n:], o.gcd_temperature)
        sup = supcon_loss(z[:nl], z[n : n + nl], y, o.gcd_sup_temperature)
        self.log("train_unsup_loss", unsup, on_epoch=True, on_step=False)
        self.log("train_sup_loss", sup, on_epoch=True, on_step=False)
        loss = o.gcd_weight * ((1 - o.gcd_sup_weight) * unsup + o.gcd_sup_weight * sup)
        if o.simgcd_weight > 0:  # SimGCD's prototypes on the same views
            logits = self.prototype_head(features)  # [2N, K]
            temp = teacher_temperature(
                self.current_epoch,
                planned_epochs(self.trainer),  # max_steps may end the run before max_epochs
                o.simgcd_teacher_warmup,
                *o.simgcd_teacher_temp,
            )
            cls, parts = simgcd_loss(
                logits[:n], logits[n:], y, nl, temp, o.gcd_sup_weight, o.simgcd_memax_weight
            )
            for name, value in parts.items():
                self.log(f"train_simgcd_{name}", value, on_epoch=True, on_step=False)
            loss = loss + o.simgcd_weight * cls
        return loss, features[:nl], y, views[1]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        o = self.opts
        if o.gcd_weight > 0:  # the representation from every image, two views each
            gcd, features, y, xu = self._gcd_step(batch)
            logits = self.model.forward_head(features)
            loss = F.cross_entropy(logits, y, label_smoothing=o.label_smoothing)
            loss = loss + gcd
        else:
            x, y, _ = batch["labelled"] if isinstance(batch, dict) else batch
            if self.mixup_alpha > 0:  # y keeps the larger share λ >= 0.5
                x, y_mix, lam = mixup(x, y, self.mixup_alpha)
            features = self.model.forward_features(x)
            logits = self.model.forward_head(features)
            loss = F.cross_entropy(logits, y, label_smoothing=o.label_smoothing)
            if self.mixup_alpha > 0:
                mixed = F.cross_entropy(logits, y_mix, label_smoothing=o.label_smoothing)
                loss = lam * loss + (1.0 - lam) * mixed
            xu = batch["pool"][0] if isinstance(batch, dict) else None
        if hasattr(self, "store"):
            cc = self._prototype_step(features, y)
            if cc is not None:
                self.log("train_cluster_loss", cc, on_epoch=True, on_step=False)
                loss = loss + o.contrastive_weight * cc
        if o.trains_unknowns and isinstance(batch, dict):
            fu = self.model.forward_features(xu)
            lu = self.model.forward_head(fu)
            if o.auto_label == "known_weibull":
                pick = torch.nonzero(self.selected[batch["pool"][-1].to(self.device)]).flatten()
            else:
                ready = getattr(self, "prototypes_ready", False)
                pick = least_known(
                    fu.detach(),
                    lu[:, : self.num_known].detach(),
                    o.unknown_topk,
                    o.unknown_by,
                    self.prototypes if ready else None,
                )
            self.picked.append(batch["pool"][-1][pick.cpu()])
            if o.unknown_class and len(pick):
                target = torch.full((len(pick),), self.num_known, device=xu.device)
                unk = F.cross_entropy(lu[pick], target)
                self.log("train_unknown_loss", unk, on_epoch=True, on_step=False)
                loss = loss + o.unknown_weight * unk
            if o.energy_margins is not None:
                k = self.num_known
                em = energy_margin_loss(logits[:, :k], lu[pick, :k], *o.energy_margins)
                self.log("train_energy_loss", em, on_epoch=True, on_step=False)
                loss = loss + o.energy_weight * em
        if not torch.isfinite(loss):
            raise UserError(
                f"the supervised loss became {loss.item()} at step {self.global_step}: lower "
                "stages.supervised.lr or set trainer.gradient_clip_val"
            )
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        self.log("train_acc", self.train_acc, on_epoch=True, on_step=False)
        return loss

    def on_train_epoch_start(self) -> None:
        self.picked = []

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        logits = self.model(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def _layer_groups(self) -> list[dict]:
        """timm's layer-decay parameter groups of the backbone (by its `group_matcher`), each
        with an `lr_scale`; the head (and any other module parameter) at the full lr.

        timm gives the last block scale 1; BEiT / MAE count the head as the top layer, so the
        last block gets `decay`, block i of L `decay^(L-i)`, the embeddings `decay^(L+1)`: all
        backbone scales are multiplied by one more `decay` (the final norm goes with the last
        block)."""
        from timm.optim import param_groups_layer_decay

        backbone = self.model.backbone
        if not hasattr(backbone, "group_matcher"):
            raise UserError(
                f"stages.supervised.layer_decay needs a timm backbone with layer groups; "
                f"{type(backbone).__name__} has none: remove layer_decay"
            )
        no_decay = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
        groups = param_groups_layer_decay(
            backbone, self.opts.weight_decay, no_decay, layer_decay=self.opts.layer_decay
        )
        for g in groups:
            g["lr_scale"] *= self.opts.layer_decay
        seen = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in self.parameters() if id(p) not in seen]  # the head
        return [*groups, {"params": rest, "lr_scale": 1.0}]

    def configure_optimizers(self):
        o = self.opts
        params = self.parameters() if o.layer_decay is None else self._layer_groups()
        if o.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(
                params,
                lr=o.lr,
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                nesterov=True,
            )
        if o.layer_decay is not None:  # LambdaLR scales each group's own initial lr
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] = o.lr * group.pop("lr_scale")
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(o.warmup_epochs * total / max(1, self.trainer.max_epochs))
        decay = warmup_cosine if o.schedule == "cosine" else warmup_linear
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: decay(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warmup_linear(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up for `warmup` steps, then linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))
