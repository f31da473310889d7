"""ORE contrastive clustering (Joseph et al., CVPR 2021, arXiv 2103.02603, §4.1).

Class prototypes ``p_i`` are momentum-updated means of a per-class feature store (a FIFO queue of
the last ``Q`` features of each class); a hinge-embedding loss pulls the penultimate feature
``f_c`` of a class-``c`` sample to ``p_c`` and pushes it at least ``margin`` away from the others::

    l(f_c, p_i) = D(f_c, p_i)                   if i == c
                = max(0, margin - D(f_c, p_i))  otherwise

Defaults from the official code (JosephKJ/OWOD, ``configs/Base-RCNN-C4-OWOD.yaml``): queue of
``Q = 20`` items per class, momentum ``0.99``; the config's ``MARGIN = 10.0``. Note that the
official ``clstr_loss_l2_cdist`` passes that ``MARGIN`` as the Minkowski ``p`` of ``torch.cdist``
and uses ``nn.HingeEmbeddingLoss(2)`` (margin 2); we follow the paper's text instead: ``D`` is the
Euclidean distance and ``margin`` (default 10) is the hinge margin.

DDP: each rank keeps its own store; ``FeatureStore.means(sync=True)`` all-reduces sums and counts
so every rank gets the global means, and ``sync_prototypes`` averages prototypes across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


class FeatureStore(nn.Module):
    """Per-class FIFO queue of the last ``items_per_class`` features, kept in buffers (so it is
    part of ``state_dict`` and moves with the module).

    Buffers: ``queue: [C, Q, D]``, ``ptr: [C]`` next write slot, ``count: [C]`` filled slots.
    """

    def __init__(self, num_classes: int, dim: int, items_per_class: int = 20) -> None:
        super().__init__()
        self.num_classes, self.items_per_class = num_classes, items_per_class
        self.register_buffer("queue", torch.zeros(num_classes, items_per_class, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Enqueue ``features: [N, D]`` under ``labels: [N]``; labels outside ``[0, C)`` (e.g.
        unknown ``-1``) are skipped. Within a class, later rows are newer."""
        keep = (labels >= 0) & (labels < self.num_classes)
        f, y = features[keep].detach().to(self.queue.dtype), labels[keep]
        if len(y) == 0:
            return
        q = self.items_per_class
        y, order = torch.sort(y, stable=True)  # group by class, keep arrival order
        f = f[order]
        n = torch.bincount(y, minlength=self.num_classes)  # [C] new items per class
        start = torch.cumsum(n, 0) - n  # first row of each class in the sorted batch
        rank = torch.arange(len(y), device=y.device) - start[y]  # arrival index within class
        # only the last Q of a class survive; this also keeps slots distinct, as index_put with
        # repeated indices has no defined winner (notably on CUDA)
        newest = rank >= n[y] - q
        slot = (self.ptr[y] + rank) % q  # distinct for the kept rows
        self.queue[y[newest], slot[newest]] = f[newest]
        self.ptr.copy_((self.ptr + n) % q)
        self.count.copy_(torch.clamp(self.count + n, max=q))

    def items(self, cls: int) -> Tensor:
        """Stored features of class ``cls``, oldest first: ``[count[cls], D]``."""
        k, q = int(self.count[cls]), self.items_per_class
        idx = (self.ptr[cls] - k + torch.arange(k, device=self.queue.device)) % q
        return self.queue[cls, idx]

    @torch.no_grad()
    def means(self, sync: bool = False) -> tuple[Tensor, Tensor]:
        """Per-class mean of the stored features ``[C, D]`` and ``valid: [C]`` (count > 0).

        With ``sync=True`` under ``torch.distributed``, sums and counts are all-reduced first, so
        the means are over the queues of all ranks."""
        slots = torch.arange(self.items_per_class, device=self.queue.device)
        filled = (slots[None, :] < self.count[:, None]).to(self.queue.dtype)  # [C, Q]
        sums = (self.queue * filled[..., None]).sum(1)  # empty slots are zero anyway
        counts = self.count.to(self.queue.dtype)
        if sync and _dist_ready():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        return sums / counts.clamp(min=1)[:, None], counts > 0


def update_prototypes(
    prototypes: Tensor, store_means: Tensor, momentum: float = 0.99, valid: Tensor | None = None
) -> Tensor:
    """``p <- momentum * p + (1 - momentum) * mean`` for classes with stored features.

    ``prototypes, store_means: [C, D]``; ``valid: [C]`` bool, classes whose mean exists (default:
    all). Rows with ``valid == False`` are returned unchanged. ORE initialises the prototypes
    with the store means when clustering starts: call with ``momentum=0`` for that.
    """
    new = momentum * prototypes + (1.0 - momentum) * store_means
    if valid is None:
        return new
    return torch.where(valid[:, None], new, prototypes)


def contrastive_clustering_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    margin: float = 10.0,
    valid: Tensor | None = None,
) -> Tensor:
    """ORE's hinge-embedding clustering loss, a scalar.

    ``features: [N, D]``, ``labels: [N]`` (rows outside ``[0, C)`` are ignored), ``prototypes:
    [C, D]``, ``valid: [C]`` prototypes that exist (default all). ``D`` is the Euclidean
    distance. Reduction: mean over all (sample, valid class) pairs — as ORE's
    ``nn.HingeEmbeddingLoss`` mean over the ``[N, C]`` distance matrix. Zero (with a graph) when
    there is nothing to compare.
    """
    num_classes = prototypes.shape[0]
    if valid is None:
        valid = torch.ones(num_classes, dtype=torch.bool, device=prototypes.device)
    rows = (labels >= 0) & (labels < num_classes)
    f, y = features[rows], labels[rows]
    if len(y) == 0 or not bool(valid.any()):
        return features.sum() * 0.0
    d = torch.cdist(f.float(), prototypes[valid].float().detach())  # [n, C_valid]
    target = torch.where(F.one_hot(y, num_classes).bool(), 1, -1)[:, valid]  # +1 own class
    return F.hinge_embedding_loss(d, target, margin=margin, reduction="mean")


@torch.no_grad()
def sync_prototypes(prototypes: Tensor) -> Tensor:
    """Average ``prototypes: [C, D]`` across DDP ranks (in place); a no-op without
    ``torch.distributed``. Call after ``update_prototypes`` so all ranks share one set."""
    if _dist_ready():
        dist.all_reduce(prototypes)
        prototypes /= dist.get_world_size()
    return prototypes
