"""Energy-bounded learning (Liu et al., "Energy-based Out-of-distribution Detection",
NeurIPS 2020, arXiv 2010.03759, §3.2 eq. 5-6): beside cross-entropy, a squared hinge pulls the
free energy of in-distribution samples below ``m_in`` and pushes that of outliers above
``m_out``, so the energy score that ORE's identifier reads separates the two by a margin.

The paper trains with ``T = 1`` and weight ``λ = 0.1`` (margins -23 / -5 or -25 / -7 for its
WRN on CIFAR, whose logits are larger). Its outliers are an auxiliary dataset; here they are
ORE's auto-labelled unknowns (the pool samples judged least known, `module.least_known`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..openset.scores import energy


def energy_margin_loss(
    known_logits: torch.Tensor, outlier_logits: torch.Tensor, m_in: float, m_out: float
) -> torch.Tensor:
    """``known_logits: [N, C]``, ``outlier_logits: [M, C]`` (known classes only) -> scalar
    ``mean(relu(E_in - m_in)^2) + mean(relu(m_out - E_out)^2)`` with ``E = -logsumexp`` (T = 1);
    a batch without outliers (M = 0) keeps the first term only.
    """
    e_in, e_out = energy(known_logits), energy(outlier_logits)
    loss = F.relu(e_in - m_in).pow(2).mean()
    return loss + F.relu(m_out - e_out).pow(2).mean() if len(e_out) else loss
