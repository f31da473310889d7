"""Distillation losses of the incremental learners (pure functions, tested by hand).

- LwF (Li & Hoiem, ECCV 2016, Eq. 2): knowledge distillation on the old classes' logits with
  temperature T = 2: cross-entropy between the old model's and the new model's softmax at T,
  weight lambda_o = 1; the paper does not scale by T^2.
- iCaRL (Rebuffi et al., CVPR 2017, Alg. 3): every output is a sigmoid; the targets are the
  one-hot label for the new classes and the old network's sigmoid outputs for the old ones,
  trained with binary cross-entropy (summed over classes, averaged over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lwf_distillation(
    new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """LwF's L_old: -sum_c y'_c log yhat'_c, averaged over the batch.

    new_logits: [N, C_old] the current model's logits on the old classes;
    old_logits: [N, C_old] the frozen previous model's logits (targets, no gradient).
    y' = softmax(old / T), yhat' = softmax(new / T) (the paper's y^(1/T) renormalised).
    """
    target = F.softmax(old_logits.detach() / temperature, dim=1)  # [N, C_old]
    log_pred = F.log_softmax(new_logits / temperature, dim=1)  # [N, C_old]
    return -(target * log_pred).sum(1).mean()


def icarl_targets(labels: torch.Tensor, old_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """iCaRL's BCE targets [N, C]: sigmoid(old logits) on the C_old old classes, one-hot on the
    rest (an exemplar of an old class gets 0 on every new class)."""
    target = F.one_hot(labels, num_classes).float()  # [N, C]
    c_old = old_logits.shape[1]
    if c_old:
        target[:, :c_old] = torch.sigmoid(old_logits.detach().float())
    return target


def icarl_loss(
    logits: torch.Tensor, labels: torch.Tensor, old_logits: torch.Tensor | None
) -> torch.Tensor:
    """iCaRL classification + distillation: BCE-with-logits of `logits` [N, C] against
    `icarl_targets`, summed over classes and averaged over the batch (the paper's loss)."""
    old = old_logits if old_logits is not None else logits.new_zeros(len(logits), 0)
    target = icarl_targets(labels, old, logits.shape[1])
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # [N, C]
    return bce.sum(1).mean()
