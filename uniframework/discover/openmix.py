"""OpenMix (Zhong et al., CVPR 2021, arXiv 2004.05551): discover novel classes by mixing.

A head over known + novel classes is trained on three kinds of sample:
- labelled images with their known label (cross-entropy), so the known classes stay put;
- *labelled x unlabelled mixtures* `lam * x_l + (1 - lam) * x_u` whose target is the joint
  distribution `[lam * onehot(y_l), (1 - lam) * p_u]` over known + novel classes: the known part
  is exact, so the mixed label is more reliable than the unlabelled pseudo-label `p_u` alone;
- *reliable-anchor mixtures*: unlabelled samples predicted with confidence >= `anchor_threshold`
  are mixed with other unlabelled samples, target `[0, lam * onehot(anchor) + (1 - lam) * p_u]`,
  adding combinations among the novel classes.
Pseudo-labels: OpenMix is built on a base discovery method that labels the unlabelled images;
ours is the novel head itself — its rows start as k-means centroids of the supervised features
and its pseudo-labels are refreshed at every step as the Sinkhorn-balanced assignment of one
augmented view, trained on the other view (the self-labelling of `uno.py`). The equipartition
keeps the refreshed pseudo-labels from collapsing onto a few classes.

Where the anchors' confidence comes from (option `anchor_from`):
- `network` (the paper's rule): the network's own class probability — the softmax over
  the novel outputs of the head, detached, averaged over the two views — and the anchor's class
  is the argmax of that same distribution. The paper's threshold 0.9 is a statement about this
  probability, so `anchor_threshold` keeps its meaning. With our k-means-initialised head the
  softmax starts flat (no row reaches 0.9), so anchors appear once self-labelling has sharpened
  the head; from then on they are fewer and more often right than the Sinkhorn rule's.
- `sinkhorn` (default; ours): the Sinkhorn pseudo-label `p_u` itself. It is batch-dependent
  and forced to be balanced, so a row's maximum says how the batch was shared out as much as
  how sure the network is: the same 0.9 then selects a different set, and the same image can
  be an anchor in one batch and not in another.
The partner's share of an anchor mixture is its pseudo-label `p_u` under both rules.
Why the default departs from the paper (measured, BENCHMARKS.md "Faithfulness"): the paper's
base model is already a trained discovery network, whose softmax is confident from the start;
ours starts from k-means centroids, so under `network` the anchor term is nearly off for a short
run. On cifar10-mini (the shipped loop, 8 epochs, seed 0, the same supervised model) anchors
were 1% of each batch in the first epoch and 13% in the fifth, and the pool's novel accuracy came
out 0.761 (test 0.773); `sinkhorn` anchors (61-73% of each batch) gave 0.823 (test 0.842).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .module import DiscoverModule, soft_cross_entropy
from .sinkhorn import sinkhorn_knopp


def mixed_target(
    known_labels: torch.Tensor, novel_probs: torch.Tensor, lam: float, num_known: int
) -> torch.Tensor:
    """[B] known labels, [B, n] novel pseudo-label distributions -> [B, k + n] joint target
    `[lam * onehot(y), (1 - lam) * p]` (each row sums to 1)."""
    one_hot = F.one_hot(known_labels, num_known).to(novel_probs.dtype)
    return torch.cat([lam * one_hot, (1 - lam) * novel_probs], dim=1)


def anchor_target(
    anchor_probs: torch.Tensor, other_probs: torch.Tensor, lam: float, num_known: int
) -> torch.Tensor:
    """[B, n] anchor and partner distributions -> [B, k + n]: no known mass, the anchor's
    confident class with weight `lam`, the partner's pseudo-label with `1 - lam`."""
    hard = F.one_hot(anchor_probs.argmax(1), anchor_probs.shape[1]).to(other_probs.dtype)
    zeros = other_probs.new_zeros(len(other_probs), num_known)
    return torch.cat([zeros, lam * hard + (1 - lam) * other_probs], dim=1)


def anchor_confidence(
    source: str, logits1: torch.Tensor, logits2: torch.Tensor, pseudo: torch.Tensor, num_known: int
) -> torch.Tensor:
    """The [B, n] distribution reliable anchors are chosen on (option `anchor_from`).

    `network`: the mean of the two views' softmax over the novel outputs of their logits
    [B, k + n], detached (a selection rule, not a training signal). `sinkhorn`: the pseudo-label
    `pseudo` [B, n] itself.
    """
    if source == "sinkhorn":
        return pseudo
    p1 = F.softmax(logits1.detach()[:, num_known:].float(), dim=1)
    p2 = F.softmax(logits2.detach()[:, num_known:].float(), dim=1)
    return 0.5 * (p1 + p2)


def reliable_anchors(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, n] class distributions -> indices [A] of the rows whose top probability is at least
    `threshold` (OpenMix's reliable anchors; the paper's threshold is 0.9)."""
    return (probs.max(1).values >= threshold).nonzero().squeeze(1)


class OpenMixModule(DiscoverModule):
    """OpenMix on two views of every image (`TwoViews` batches); with `opts.overcluster`, UNO's
    over-clustering head beside it, and the count heads when the stage adds them
    (`DiscoverModule.extra_head_losses`)."""

    def __init__(self, model, opts, num_known: int) -> None:
        super().__init__(model, opts, num_known)
        self.add_overcluster_head()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        o, k = self.opts, self.num_known
        xl, _, yl, _ = batch["labelled"]
        xu1, xu2, _, _ = batch["pool"]
        b = min(len(xl), len(xu1))
        if b < 2:  # a ragged last batch: BatchNorm needs two samples; labelled loss only
            return self.check_finite(F.cross_entropy(self.model(xl), yl))
        xl, yl, xu1, xu2 = xl[:b], yl[:b], xu1[:b], xu2[:b]
        loss = F.cross_entropy(self.model(xl), yl)
        # pseudo-labels: the novel head's balanced assignment of each view (detached)
        lu1, c1, f1 = self.views_and_features(xu1)  # [B, k + n], [B, n], [B, D]
        lu2, c2, f2 = self.views_and_features(xu2)
        p1 = sinkhorn_knopp(c1, o.sinkhorn_epsilon)
        p2 = sinkhorn_knopp(c2, o.sinkhorn_epsilon)
        zeros = lu1.new_zeros(b, k)
        self_label = 0.5 * (
            soft_cross_entropy(lu1, torch.cat([zeros, p2], 1))
            + soft_cross_entropy(lu2, torch.cat([zeros, p1], 1))
        )
        pu = 0.5 * (p1 + p2)  # [B, n] the image's pseudo-label
        lam = float(self.beta.sample())
        mix = soft_cross_entropy(
            self.model(lam * xl + (1 - lam) * xu1), mixed_target(yl, pu, lam, k)
        )
        self.log("train_self_label_loss", self_label, on_epoch=True, on_step=False)
        self.log("train_mix_loss", mix, on_epoch=True, on_step=False)
        loss = loss + self_label + o.mix_weight * mix
        loss = loss + self.extra_head_losses(f1, f2, lu1[:, :k], lu2[:, :k])
        # [B, n] the distribution the anchors are chosen on; their class is its argmax too
        conf = anchor_confidence(o.anchor_from, lu1, lu2, pu, k)
        anchors = reliable_anchors(conf, o.anchor_threshold)
        if o.anchor_weight > 0 and len(anchors) > 1:  # a batch of 1 breaks BatchNorm
            partner = torch.randint(0, b, (len(anchors),), device=xu1.device)
            lam_a = float(self.beta.sample())
            xa = lam_a * xu1[anchors] + (1 - lam_a) * xu2[partner]
            ta = anchor_target(conf[anchors], pu[partner], lam_a, k)
            amix = soft_cross_entropy(self.model(xa), ta)
            self.log("train_anchor_loss", amix, on_epoch=True, on_step=False)
            loss = loss + o.anchor_weight * amix
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        self.log("anchors", float(len(anchors)) / b, on_epoch=True, on_step=False)
        return self.check_finite(loss)
