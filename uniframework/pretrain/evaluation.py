"""Frozen-feature evaluation of a pretrained backbone: weighted k-NN and a linear probe.

- k-NN (Wu et al. 2018, as in DINO / iBOT's `eval_knn.py`): cosine similarity of L2-normalised
  features, the k nearest train features vote for their class with weight exp(sim / T);
  defaults k = 20, T = 0.07.
- Linear probe: logistic regression on standardised features (standardising plays the part of
  MAE's BatchNorm without affine before the linear head), scikit-learn's L-BFGS.

Both are fitted on the labelled known split and scored on the test images of the known classes.
Features are the backbone's pooled output [N, D] (ViT: the class token, timm's default).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from ..data import OpenWorldData
from .options import PretrainOptions


def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN: train_feats [N, D], train_labels [N], test_feats [M, D] -> labels [M].

    Class score = sum over the k most similar train features of exp(cosine / temperature);
    test features are handled `chunk` at a time so the [chunk, N] similarities stay small.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    k = min(k, len(train_feats))
    bank = F.normalize(train_feats.float(), dim=1)
    out = []
    for query in F.normalize(test_feats.float(), dim=1).split(chunk):
        sim, idx = (query @ bank.T).topk(k, dim=1)  # [m, k]
        votes = torch.zeros(len(query), num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    iters: int = 100,
) -> float:
    """Accuracy of logistic regression (L2, C = 1) on standardised frozen features."""
    if len(train_labels.unique()) < 2 or len(test_labels) == 0:
        return float("nan")
    scaler = StandardScaler().fit(train_feats.numpy())
    clf = LogisticRegression(max_iter=iters)
    with warnings.catch_warnings():  # a capped iteration count is a choice, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train_feats.numpy()), train_labels.numpy())
    pred = clf.predict(scaler.transform(test_feats.numpy()))
    return float((torch.from_numpy(pred) == test_labels).float().mean())


@torch.no_grad()
def backbone_features(
    backbone: torch.nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features [N, D] (float, on the CPU) and labels [N] over a loader."""
    was_training = backbone.training
    backbone.eval().to(device)
    feats, labels = [], []
    for x, y, _ in loader:
        feats.append(backbone(x.to(device)).float().cpu())
        labels.append(y)
    backbone.train(was_training)
    if not feats:
        return torch.zeros(0, backbone.num_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def evaluate(
    backbone: torch.nn.Module,
    data: OpenWorldData,
    opts: PretrainOptions,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """`knn_acc` and `linear_acc` of a frozen backbone (NaN when there are no test images)."""
    train_f, train_y = backbone_features(backbone, data.loader(data.view("labelled")), device)
    test_f, test_y = backbone_features(backbone, data.loader(data.view("test_known")), device)
    metrics = {"knn_acc": float("nan"), "linear_acc": float("nan")}
    if len(test_y) and len(train_y):
        pred = knn_classify(
            train_f, train_y, test_f, opts.knn_k, opts.knn_temperature, data.split.num_known
        )
        metrics["knn_acc"] = float((pred == test_y).float().mean())
    if opts.linear_probe_iters and len(train_y):
        metrics["linear_acc"] = linear_probe(
            train_f, train_y, test_f, test_y, opts.linear_probe_iters
        )
    return metrics
