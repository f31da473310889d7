"""What the discover stage says about its new groups: their order and names, the diagnostics a
person's own pool allows (no truth), `groups.csv`, and the evaluation where truth exists."""

from __future__ import annotations

import csv

import numpy as np
import torch

from ..models import Classifier
from .labels import cluster_name
from .metrics import clustering_metrics, gcd_accuracy, hungarian_mapping


def order_by_size(model: Classifier, k: int, n: int, pred: np.ndarray) -> np.ndarray:
    """Renumber the n new groups by size, largest first: the head's rows k.. are reordered in
    place; returns `rank` [n], the new position of group j (`pred`: model labels, new >= k)."""
    sizes = np.bincount(pred[pred >= k] - k, minlength=n)
    order = np.argsort(-sizes, kind="stable")
    with torch.no_grad():
        model.head.weight[k : k + n] = model.head.weight[k : k + n][torch.from_numpy(order)]
        model.head.bias[k : k + n] = model.head.bias[k : k + n][torch.from_numpy(order)]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return rank


def group_diagnostics(
    features: torch.Tensor, pred: np.ndarray, confidence: np.ndarray, k: int, n: int
) -> dict[str, float]:
    """What can be known without truth, per new group j (`group_<j+1>_*`): its size, the mean
    confidence (top softmax probability) of its images and their mean silhouette (cosine) on
    the features; `pool_new_share`: the share of the chosen pool given to some new group."""
    from sklearn.metrics import silhouette_samples

    new = pred >= k
    out: dict[str, float] = {"pool_new_share": float(new.mean()) if len(new) else 0.0}
    sil = np.full(len(pred), np.nan)
    if len(np.unique(pred[new])) >= 2 and new.sum() > len(np.unique(pred[new])):
        sil[new] = silhouette_samples(features[new].numpy(), pred[new], metric="cosine")
    for j in range(n):
        members = pred == k + j
        out[f"group_{j + 1}_size"] = int(members.sum())
        if members.any():
            out[f"group_{j + 1}_confidence"] = float(confidence[members].mean())
            if not np.isnan(sil[members]).all():
                out[f"group_{j + 1}_silhouette"] = float(np.nanmean(sil[members]))
    return out


def write_groups(ctx, data, index: np.ndarray, pred: np.ndarray, confidence: np.ndarray, k: int):
    """`discover/groups.csv`: each image of the chosen pool -> its group (`new-<j>`, or the
    known class it was given) and the confidence; the file path where the images came from
    files, else the train-set index."""
    names = data.class_names[:k]
    paths = getattr(data.train, "paths", None)
    out = ctx.run_dir / "discover" / "groups.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "group", "confidence"])
        order = np.lexsort((-confidence, pred))
        for i in order:
            j = int(index[i])
            where = str(paths[j]) if paths is not None else str(j)
            group = names[pred[i]] if pred[i] < k else cluster_name(int(pred[i]), k)
            w.writerow([where, group, f"{confidence[i]:.4f}"])
    tmp.replace(out)


def evaluate(data, pool_all, keep, pool_pred, test, test_pred, k: int) -> dict:
    """The evaluation metrics (see the module docstring), each only where its truth exists:
    the pool's hidden classes (benchmark) for `gcd_*`, `novel_*`; the test set's classes for
    `test_novel_*`, `known_acc`. `mapping`: cluster -> true class, from the pool's truth, else
    from the test's novel classes (each absent when that truth is)."""
    metrics: dict = {}
    truth = data.pool_truth(pool_all["index"].numpy())
    if test is None:  # no test folder: nothing to evaluate on
        test = {"labels": torch.zeros(0, dtype=torch.long), "logits": torch.zeros(0, k)}
    novel_test = (test["labels"] >= k).numpy()
    if novel_test.any():
        on_test = clustering_metrics(test["labels"].numpy()[novel_test], test_pred)
        metrics.update({f"test_novel_{m}": v for m, v in on_test.items()})
    if (~novel_test).any():
        known = torch.from_numpy(~novel_test)
        right = test["logits"][known][:, :k].argmax(1) == test["labels"][known]
        metrics["known_acc"] = float(right.float().mean())
    if truth is None:
        novel = test["labels"].numpy()[novel_test]
        metrics["mapping"] = hungarian_mapping(novel, test_pred + k) if len(novel) else {}
        return metrics
    # GCD v2 accuracy over the whole unlabelled pool: the rest keep their known class
    every = pool_all["logits"][:, :k].argmax(1).numpy()
    every[keep.numpy()] = pool_pred
    gcd = gcd_accuracy(truth, every, k)
    # (a part with no images, e.g. old classes in a pool of novel ones, is left out)
    metrics.update({f"gcd_{part}_acc": v for part, v in gcd.items() if v == v})
    new = pool_pred >= k  # the images given to a new class
    pool_truth = truth[keep.numpy()][new]
    novel_pool = pool_truth >= k
    on_pool = clustering_metrics(pool_truth[novel_pool], pool_pred[new][novel_pool] - k)
    metrics.update({f"novel_{m}": v for m, v in on_pool.items()})
    metrics["mapping"] = hungarian_mapping(pool_truth[novel_pool], pool_pred[new][novel_pool])
    return metrics
