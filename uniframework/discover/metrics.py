"""Clustering metrics for discovered classes: Hungarian accuracy (scipy), NMI and ARI (sklearn).

Cluster ids are arbitrary, so accuracy is measured after the one-to-one mapping of clusters to
classes that maximises agreement (the Hungarian algorithm on the contingency table).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def hungarian_mapping(truth, pred) -> dict[int, int]:
    """The best one-to-one map cluster id -> class id (clusters beyond the classes stay
    unmapped, and the other way round)."""
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    if truth.size == 0:
        return {}
    clusters, classes = np.unique(pred), np.unique(truth)
    # counts[i, j] = how many samples of cluster i have class j
    counts = np.zeros((len(clusters), len(classes)), np.int64)
    np.add.at(counts, (np.searchsorted(clusters, pred), np.searchsorted(classes, truth)), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols, strict=True)}


def cluster_acc(truth, pred) -> float:
    """Fraction of samples whose cluster maps (Hungarian) to their class; NaN when empty."""
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    if truth.size == 0:
        return float("nan")
    mapping = hungarian_mapping(truth, pred)
    mapped = np.array([mapping.get(int(p), -(10**9)) for p in pred])
    return float((mapped == truth).mean())


def clustering_metrics(truth, pred) -> dict[str, float]:
    """`acc` (Hungarian), `nmi`, `ari` of a clustering against the true classes."""
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    if truth.size == 0:
        return {"acc": float("nan"), "nmi": float("nan"), "ari": float("nan")}
    return {
        "acc": cluster_acc(truth, pred),
        "nmi": float(normalized_mutual_info_score(truth, pred)),
        "ari": float(adjusted_rand_score(truth, pred)),
    }


def gcd_accuracy(truth, pred, num_known: int) -> dict[str, float]:
    """Generalized Category Discovery accuracy (Vaze et al. CVPR 2022, the "v2" protocol): one
    Hungarian assignment of clusters to classes over **all** pool images (old and new classes
    together), then the accuracy split by the true class: `all`, `old` (classes < num_known),
    `new` (classes >= num_known). A cluster matched to no class counts as wrong."""
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    if truth.size == 0:
        return {"all": float("nan"), "old": float("nan"), "new": float("nan")}
    mapping = hungarian_mapping(truth, pred)
    right = np.array([mapping.get(int(p), -(10**9)) for p in pred]) == truth
    old = truth < num_known

    def mean(mask: np.ndarray) -> float:
        return float(right[mask].mean()) if mask.any() else float("nan")

    return {"all": float(right.mean()), "old": mean(old), "new": mean(~old)}
