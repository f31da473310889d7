"""k-means on features (scikit-learn) and estimating how many novel classes there are.

Features are L2-normalised first, so k-means groups by direction (cosine), as the backbones'
pooled features are compared everywhere else in the framework.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigvalsh
from scipy.optimize import minimize_scalar
from scipy.sparse.csgraph import laplacian
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.neighbors import kneighbors_graph

from .metrics import cluster_acc


def normalise(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=1).numpy()


def kmeans(features: torch.Tensor, k: int, seed: int = 0, n_init: int = 10) -> KMeans:
    """scikit-learn k-means (k-means++, `n_init` restarts) on normalised features [N, D]."""
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(normalise(features))


def assign(model: KMeans, features: torch.Tensor) -> np.ndarray:
    """Nearest centroid of each normalised feature [N, D] -> [N] cluster ids."""
    return model.predict(normalise(features))


def _labelled_and_pool(labelled, labels, pool, max_points: int, seed: int):
    """A random subsample of at most `max_points` features, labelled first (up to half), then
    pool: (features [M, D], the labelled part's labels [L])."""
    rng = np.random.default_rng(seed)
    keep_l = rng.permutation(len(labelled))[: max_points // 2]
    keep_p = rng.permutation(len(pool))[: max_points - len(keep_l)]
    return torch.cat([labelled[keep_l], pool[keep_p]]), labels[keep_l].numpy()


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
    num_known = int(labels.max()) + 1
    x, y = _labelled_and_pool(labelled, labels, pool, max_points, seed)
    scores = {}
    for n in candidates:
        pred = kmeans(x, num_known + n, seed, n_init=3).labels_
        acc = cluster_acc(y, pred[: len(y)])
        sil = float(silhouette_score(normalise(x), pred, metric="cosine"))
        scores[n] = acc + sil
    return max(scores, key=scores.get), scores


def semi_supervised_kmeans(
    labelled: torch.Tensor,
    labels: torch.Tensor,
    pool: torch.Tensor,
    num_clusters: int,
    seed: int = 0,
    n_init: int = 5,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Semi-supervised k-means (GCD, Vaze et al. 2022, Sec. 3.2) on normalised features.

    The labelled images [L, D] keep their class as their cluster throughout; cluster c <
    num_known starts at class c's mean, the others by k-means++ over the pool [P, D] given
    those centres. Each iteration assigns every pool image to its nearest centre and moves each
    centre to the mean of its members (labelled + pool). The best of `n_init` starts (lowest
    inertia) is kept. Returns the pool's cluster ids [P] (< num_known = a known class) and the
    centres [num_clusters, D].
    """
    xl, xp = normalise(labelled), normalise(pool)
    y = labels.numpy().astype(np.int64)
    num_known = int(y.max()) + 1
    if num_clusters < num_known:
        raise ValueError(f"num_clusters {num_clusters} < the {num_known} labelled classes")
    x = np.concatenate([xl, xp])
    known_centres = np.stack([xl[y == c].mean(0) for c in range(num_known)])
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centres = _plusplus(xp, known_centres, num_clusters - num_known, rng)
        assign = np.full(len(xp), -1)
        for _ in range(max_iter):
            # squared distances [P, K] = |x|^2 - 2 x.c + |c|^2
            d = (xp**2).sum(1, keepdims=True) - 2 * xp @ centres.T + (centres**2).sum(1)
            new = d.argmin(1)
            if (new == assign).all():
                break
            assign = new
            members = np.concatenate([y, assign])
            for c in range(num_clusters):
                if (members == c).any():
                    centres[c] = x[members == c].mean(0)
        inertia = float(d[np.arange(len(xp)), assign].sum())
        if best is None or inertia < best[0]:
            best = (inertia, assign.copy(), centres.copy())
    return best[1], best[2]


def _plusplus(x: np.ndarray, given: np.ndarray, n: int, rng) -> np.ndarray:
    """`given` centres plus `n` more drawn by k-means++ (probability ~ squared distance to the
    nearest centre so far) from the rows of `x`."""
    centres = [c for c in given]
    d = ((x[:, None, :] - given[None]) ** 2).sum(-1).min(1)
    for _ in range(n):
        p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1 / len(x))
        c = x[rng.choice(len(x), p=p)]
        centres.append(c)
        d = np.minimum(d, ((x - c) ** 2).sum(1))
    return np.stack(centres).astype(np.float64)


def estimate_num_classes(
    labelled: torch.Tensor,
    labels: torch.Tensor,
    pool: torch.Tensor,
    max_novel: int,
    seed: int = 0,
    max_points: int = 4000,
    tolerance: float = 0.01,
    grid_up_to: int = 16,
) -> tuple[int, dict[int, float]]:
    """The number of novel classes, after GCD's estimator (Vaze et al. 2022, Appendix): k-means
    with K clusters on labelled + pool features together, scored by the Hungarian accuracy of
    the clustering on the labelled images, over K in [num_known + 1, num_known + max_novel].

    The score falls when K is too large (clusters split the labelled classes) but is flat when K
    is too small and only unlabelled classes merge, so the answer is the **largest** K whose
    score is within `tolerance` of the best: the finest clustering that still keeps each
    labelled class whole (GCD maximises with Brent's method and breaks no ties). Up to
    `grid_up_to` candidates every K is tried; beyond, Brent's bounded search (scipy) as in GCD.
    Returns the number of novel classes (K - num_known) and each tried count's score.
    """
    num_known = int(labels.max()) + 1
    x, y = _labelled_and_pool(labelled, labels, pool, max_points, seed)
    scores: dict[int, float] = {}

    def neg_acc(k: float) -> float:
        k = int(round(k))
        if k not in scores:
            pred = kmeans(x, k, seed, n_init=3).labels_
            scores[k] = cluster_acc(y, pred[: len(y)])
        return -scores[k]

    lo, hi = num_known + 1, num_known + max_novel
    if hi - lo + 1 <= grid_up_to:
        for k in range(lo, hi + 1):
            neg_acc(k)
    else:
        minimize_scalar(neg_acc, bounds=(lo, hi), method="bounded", options={"xatol": 0.5})
        for k in (lo, hi):  # the bounded search never evaluates the ends themselves
            neg_acc(k)
    best = max(scores.values())
    k = max(k for k, v in scores.items() if v >= best - tolerance)
    return k - num_known, {k - num_known: v for k, v in sorted(scores.items())}


def estimate_by_silhouette(
    pool: torch.Tensor,
    candidates: range,
    seed: int = 0,
    tolerance: float = 0.02,
    max_points: int = 3000,
) -> tuple[int, dict[int, float]]:
    """The number of novel classes from the unknown pool images' features [P, D] alone: k-means
    for each count n in `candidates` (n >= 2), scored by the silhouette (cosine, Rousseeuw
    1987). The answer is the **largest** n whose silhouette is within `tolerance` of the best:
    the finest partition that is still about as well separated. (Splitting a real class lowers
    the silhouette sharply; merging two close ones lowers it little, so the plain argmax leans
    to too few classes.) Returns n and every candidate's score."""
    rng = np.random.default_rng(seed)
    x = pool[rng.permutation(len(pool))[:max_points]]
    partitions = {n: kmeans(x, n, seed, n_init=3).labels_ for n in candidates if 2 <= n < len(x)}
    if not partitions:
        raise ValueError(f"no candidate count in {candidates} fits {len(x)} pool images")
    return best_partition(x, partitions, tolerance)


def best_partition(
    features: torch.Tensor, partitions: dict[int, np.ndarray], tolerance: float = 0.0
) -> tuple[int, dict[int, float]]:
    """Score each candidate partition `partitions[n]` ([P] labels) of the same features [P, D]
    by its silhouette (cosine); return the largest n within `tolerance` of the best score and
    every score. A partition that puts everything in one cluster scores -1 (the silhouette is
    undefined there)."""
    x = normalise(features)
    scores = {
        n: float(silhouette_score(x, labels, metric="cosine"))
        if 1 < len(np.unique(labels)) < len(x)
        else -1.0
        for n, labels in partitions.items()
    }
    best = max(scores.values())
    return max(n for n, v in scores.items() if v >= best - tolerance), scores


def head_partitions(features: torch.Tensor, heads) -> dict[int, np.ndarray]:
    """{c: [P] labels}: each head's partition of features [P, D] — the row of largest cosine
    (the Sinkhorn heads are trained on cosines), c = the head's number of rows."""
    f = F.normalize(features.float(), dim=1)
    return {
        h.weight.shape[0]: (f @ F.normalize(h.weight.detach().float(), dim=1).T).argmax(1).numpy()
        for h in heads
    }


def refine_partition(
    features: torch.Tensor | np.ndarray, labels: np.ndarray, count: int | None = None
) -> np.ndarray:
    """k-means (on normalised features [P, D], P > count) started from the means of a
    partition's clusters ([P] labels 0..count-1, default count = the largest label + 1; an empty
    cluster starts at a point of its own) -> [P] refined labels. A Sinkhorn head's partition is
    balanced by force and the head lags the features it is read on; Lloyd's iterations move it
    to the nearest partition the features themselves support."""
    x = normalise(torch.as_tensor(features))
    c = count or int(labels.max()) + 1
    centres = np.stack([x[labels == j].mean(0) if (labels == j).any() else x[j] for j in range(c)])
    return KMeans(n_clusters=c, init=centres, n_init=1).fit(x).labels_


def spectral_gaps(
    features: torch.Tensor | np.ndarray, counts, neighbours: int | None = None
) -> dict[int, float]:
    """The eigengap heuristic (von Luxburg 2007, "A tutorial on spectral clustering", Sec. 8.3):
    on a symmetric k-nearest-neighbour graph of the features [P, D] (cosine; `neighbours`
    default max(10, P / 25)), the normalised Laplacian has as many near-zero eigenvalues as
    the graph has well-separated groups; {c: lambda_c+1 - lambda_c} for each count c in
    `counts` (eigenvalues ascending, lambda_1 = 0): large where c groups end and the next
    eigenvalue jumps."""
    x = normalise(torch.as_tensor(features))
    k = neighbours or max(10, len(x) // 25)
    a = kneighbors_graph(x, min(k, len(x) - 1), metric="cosine")
    graph = 0.5 * (a + a.T)
    top = max(counts) + 1
    ev = eigvalsh(laplacian(graph, normed=True).toarray(), subset_by_index=[0, top - 1])
    return {c: float(ev[c] - ev[c - 1]) for c in counts}


def count_by_consensus(
    features: torch.Tensor, partitions: dict[int, np.ndarray], seed: int = 0, max_points: int = 2000
) -> tuple[int, dict[int, float], dict[int, float]]:
    """The number of classes from candidate partitions {c: [P] labels} of the same features
    [P, D] (the count heads'), by two criteria that fail in opposite ways: each partition,
    refined by k-means (`refine_partition`), scored by its silhouette (cosine) — which merges
    two close classes — and the spectral gap at c (`spectral_gaps`) — which splits a class
    with two modes. The count is the best sum of the two ranks (ties: the better silhouette).
    At most `max_points` images (a seeded subsample) take part, and only the counts 2..P-1 of
    the P images that do. Returns the count, the silhouettes and the gaps."""
    keep = np.random.default_rng(seed).permutation(len(features))[:max_points]
    x = normalise(torch.as_tensor(features)[keep])
    counts = sorted(c for c in partitions if 1 < c < len(x))
    if not counts:
        raise ValueError(f"no candidate count in {sorted(partitions)} fits {len(x)} images")
    refined = {c: refine_partition(x, partitions[c][keep], c) for c in counts}
    _, silhouettes = best_partition(torch.from_numpy(x), refined)
    gaps = spectral_gaps(x, counts)
    by_sil = sorted(counts, key=lambda c: -silhouettes[c])
    by_gap = sorted(counts, key=lambda c: -gaps[c])
    rank = {c: (by_sil.index(c) + by_gap.index(c), by_sil.index(c)) for c in counts}
    return min(rank, key=rank.get), silhouettes, gaps
