"""SimGCD's parametric classifier (Wen et al., ICCV 2023, arXiv 2211.11727), as a representation
loss of the supervised stage.

A bias-free prototype classifier over K = known + new classes reads the L2-normalised backbone
features (cosine logits in [-1, 1], rows kept at unit norm: weight norm with g fixed at 1). On
the same two views that GCD's contrastive loss sees (`_gcd_step`), it is trained with

    L_cls = (1 - lam) * (L_distill - eps * H(mean p)) + lam * L_sup

- `L_sup`: cross-entropy of the labelled views at the student temperature 0.1;
- `L_distill`: self-distillation over every view, labelled or not: each view's prediction
  (student temperature 0.1) learns the other view's sharpened one (teacher temperature 0.07 ->
  0.04 over the first epochs, no gradient);
- `H(mean p)`: the entropy of the batch's mean prediction (student temperature), maximised
  (eps = `memax_weight` 2): the mean-entropy regulariser that keeps the pool from collapsing
  onto the known prototypes. In the code as `log K - H`, >= 0.

What follows the official code (github.com/CVMI-Lab/SimGCD, `model.py`, `train.py`,
`scripts/run_cifar10.sh`): the temperatures, lam = 0.35, eps = 2, the weight-normed prototypes on
normalised backbone features, the teacher being the same network's other view (no EMA), the
regulariser over both views of the whole batch.

What differs, and why:
- the teacher's warm-up: official 30 of 200 epochs; here the same share of the stage's epochs
  (`teacher_warmup` 0.15), since in a 30-epoch stage 0.04 would come only at the last epoch;
- K: SimGCD is given the class count. A person's folders do not tell it, so the number of new
  prototypes is a prior (`simgcd_new_classes`; None = as many as the known classes); the
  discover stage still estimates the count on the learned features, and the prototypes are
  thrown away after the stage, like GCD's projection head;
- the network's own known-class head keeps its cross-entropy (every later stage reads it); the
  prototypes only shape the features.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..discover.module import soft_cross_entropy
from ..pretrain.ibot_loss import teacher_temp_schedule


class PrototypeHead(nn.Module):
    """Cosine classifier: features [N, D] -> logits [N, K] = normalised features against
    unit-norm prototype rows (SimGCD's `last_layer`, weight norm with g = 1, no bias)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default init

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


def teacher_temperature(
    epoch: int, epochs: int, warmup: float, start: float = 0.07, end: float = 0.04
) -> float:
    """The teacher's temperature at `epoch` (0-based): linear from `start` to `end` over the
    first round(warmup * epochs) epochs (official: np.linspace over 30 epochs), then `end`
    (iBOT's schedule, the same linspace)."""
    return teacher_temp_schedule(epoch, start, end, round(warmup * epochs))


def self_distillation_loss(
    logits1: torch.Tensor, logits2: torch.Tensor, teacher_temp: float, student_temp: float = 0.1
) -> torch.Tensor:
    """Cross-view self-distillation on the cosine logits of two views [N, K]: each view's
    log-softmax at `student_temp` against the other view's softmax at `teacher_temp` (no
    gradient through the target); mean over the images, then over the two directions."""
    t1, t2 = (F.softmax(x.detach() / teacher_temp, dim=1) for x in (logits1, logits2))
    return 0.5 * (
        soft_cross_entropy(logits1 / student_temp, t2)
        + soft_cross_entropy(logits2 / student_temp, t1)
    )


def mean_entropy_gap(logits: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """log K - H(mean softmax) of cosine logits [N, K] at `student_temp`: 0 when the batch's mean
    prediction is uniform over the K classes, log K when every image picks the same one."""
    mean = F.softmax(logits / student_temp, dim=1).mean(0)  # [K]
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    return math.log(logits.shape[1]) - entropy


def simgcd_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    labels: torch.Tensor,
    num_labelled: int,
    teacher_temp: float,
    sup_weight: float = 0.35,
    memax_weight: float = 2.0,
    student_temp: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimGCD's classifier loss on the cosine logits of two views [N, K] of a batch whose first
    `num_labelled` images carry `labels` [L] (the rest are the pool): (loss, its parts)."""
    nl = num_labelled
    sup = F.cross_entropy(torch.cat([logits1[:nl], logits2[:nl]]) / student_temp, labels.repeat(2))
    distill = self_distillation_loss(logits1, logits2, teacher_temp, student_temp)
    memax = mean_entropy_gap(torch.cat([logits1, logits2]), student_temp)
    loss = (1 - sup_weight) * (distill + memax_weight * memax) + sup_weight * sup
    return loss, {"sup": sup, "distill": distill, "memax": memax}
