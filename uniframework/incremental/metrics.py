"""Class-incremental metrics, defined once (pure functions over predictions and a matrix).

A[t, j] = accuracy, after training task t, on the test images of task j's classes (j <= t;
NaN above the diagonal), predicting among every class seen up to task t.
- accuracy on all seen classes after task t = mean over those images = sum_j A[t, j] n_j / sum n_j
- average incremental accuracy = mean over t of that (Rebuffi et al. 2017)
- last accuracy = its value after the final task
- forgetting = mean over old tasks j < T-1 of max_{t < T-1} A[t, j] - A[T-1, j]
  (Chaudhry et al. 2018)
"""

from __future__ import annotations

import numpy as np
import torch

UNMATCHED = -2  # a test image whose true novel class got no discovered cluster: always wrong


def task_accuracies(
    pred: torch.Tensor, labels: torch.Tensor, tasks: list[list[int]], step: int
) -> list[float]:
    """Row `step` of A: accuracy on each task j <= step's test images (NaN when none)."""
    row = []
    for classes in tasks[: step + 1]:
        mask = torch.isin(labels, torch.as_tensor(classes))
        row.append(float((pred[mask] == labels[mask]).float().mean()) if mask.any() else np.nan)
    return row


def seen_accuracy(matrix: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Accuracy on every class seen so far after each task, [T], from A [T, T] and the test
    image count of each task [T]."""
    a = np.asarray(matrix, float)
    n = np.asarray(counts, float)
    out = []
    for t in range(a.shape[0]):
        row, w = a[t, : t + 1], n[: t + 1]
        ok = ~np.isnan(row) & (w > 0)
        out.append(float((row[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else np.nan)
    return np.array(out)


def forgetting(matrix: np.ndarray) -> float:
    """Mean over old tasks of best-minus-final accuracy; 0 with a single task."""
    a = np.asarray(matrix, float)
    last = a.shape[0] - 1
    if last < 1:
        return 0.0
    drops = [np.nanmax(a[j:last, j]) - a[last, j] for j in range(last)]
    return float(np.nanmean(drops))


def summarize(matrix: np.ndarray, counts: np.ndarray, prefix: str = "") -> dict[str, float]:
    """`avg_acc`, `last_acc`, `forgetting` and `task<t>_acc` (accuracy on all classes seen after
    task t), each under `prefix` (e.g. "nme_")."""
    seen = seen_accuracy(matrix, counts)
    out = {
        f"{prefix}avg_acc": float(np.nanmean(seen)),
        f"{prefix}last_acc": float(seen[-1]),
        f"{prefix}forgetting": forgetting(matrix),
    }
    out.update({f"{prefix}task{t}_acc": float(v) for t, v in enumerate(seen)})
    return out


def final_accuracies(
    pred: torch.Tensor, labels: torch.Tensor, num_known: int, prefix: str = ""
) -> dict[str, float]:
    """After the last task: `all_acc` (every test image), `old_acc` (the known / task-0
    classes), `new_acc` (the classes added incrementally). Labels == UNMATCHED (novel images
    whose class was never discovered) count as wrong in all_acc and new_acc."""

    def acc(mask: torch.Tensor) -> float:
        return float((pred[mask] == labels[mask]).float().mean()) if mask.any() else float("nan")

    old = (labels >= 0) & (labels < num_known)
    new = (labels >= num_known) | (labels == UNMATCHED)
    return {
        f"{prefix}all_acc": acc(old | new),
        f"{prefix}old_acc": acc(old),
        f"{prefix}new_acc": acc(new),
    }
