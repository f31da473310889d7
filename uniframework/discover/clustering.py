"""k-means on features (scikit-learn) and estimating how many novel classes there are.

Features are L2-normalised first, so k-means groups by direction (cosine), as the backbones'
pooled features are compared everywhere else in the framework.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from .metrics import cluster_acc


def normalise(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=1).numpy()


def kmeans(features: torch.Tensor, k: int, seed: int = 0, n_init: int = 10) -> KMeans:
    """scikit-learn k-means (k-means++, `n_init` restarts) on normalised features [N, D]."""
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(normalise(features))


def assign(model: KMeans, features: torch.Tensor) -> np.ndarray:
    """Nearest centroid of each normalised feature [N, D] -> [N] cluster ids."""
    return model.predict(normalise(features))


def estimate_num_novel(
    labelled: torch.Tensor,
    labels: torch.Tensor,
    pool: torch.Tensor,
    candidates: range,
    seed: int = 0,
    max_points: int = 3000,
) -> tuple[int, dict[int, float]]:
    """Pick the number of novel classes n among `candidates` (after DTC, Han et al. ICCV 2019).

    For each n, k-means with (known + n) clusters runs on labelled known features together with
    the pool. Two signals, both in [-1, 1]: the Hungarian accuracy on the labelled part — known
    classes must come out as whole clusters, so too many clusters split them and lower it — and
    the silhouette of the clustering (cosine), which falls when classes are merged, i.e. when n
    is too small. n = argmax of their sum. Returns n and every candidate's score.
    """
    rng = np.random.default_rng(seed)
    num_known = int(labels.max()) + 1
    keep_l = rng.permutation(len(labelled))[: max_points // 2]
    keep_p = rng.permutation(len(pool))[: max_points - len(keep_l)]
    x = torch.cat([labelled[keep_l], pool[keep_p]])
    y = labels[keep_l].numpy()
    scores = {}
    for n in candidates:
        pred = kmeans(x, num_known + n, seed, n_init=3).labels_
        acc = cluster_acc(y, pred[: len(keep_l)])
        sil = float(silhouette_score(normalise(x), pred, metric="cosine"))
        scores[n] = acc + sil
    return max(scores, key=scores.get), scores
