"""Sinkhorn-Knopp equipartition (SwAV, Caron et al. 2020; used by UNO, Fini et al. 2021).

Turns scores [N, K] into soft assignments Q [N, K] whose rows each sum to 1 and whose columns
each sum to N / K — every cluster gets an equal share of the batch, which is what keeps a
self-labelling head from collapsing onto a few clusters.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """logits [N, K] -> Q [N, K]: rows sum to 1, columns to N / K (exactly after the final
    row step, up to the column error left by `iters` alternations)."""
    # Q starts as exp(logits / eps), with the max removed for numerical safety.
    q = (logits.float() / epsilon).sub(logits.float().max() / epsilon).exp().T  # [K, N]
    n, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True).clamp_min(1e-30)  # each cluster: total 1 / K
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)  # each sample: total 1 / N
        q /= n
    return (q * n).T  # rows sum to 1
