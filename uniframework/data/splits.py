"""The open-world split, built by code from a seed — never from hand-made path lists.

Classes are put in an order (sorted, or shuffled by the seed); the model's label `i` is the
class `class_order[i]`. The first `num_known` are known, the rest novel:

    train set = labelled (known, minus val) + val (held-out known) + unlabelled pool
    unlabelled pool = the known images left unlabelled + every novel image (label shown as -1)
    test set = every class
    tasks = [known] + the novel classes spread over `num_tasks - 1` incremental tasks
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

UNKNOWN = -1  # the label of anything the model is not told about


@dataclass(frozen=True)
class OpenWorldSplit:
    class_order: list[int]  # model label i <-> dataset class class_order[i]
    num_known: int
    labelled: np.ndarray  # train indices, known classes, labelled (training)
    val: np.ndarray  # train indices, known classes, labelled (held out: best checkpoint, calib.)
    unlabelled: np.ndarray  # train indices, labels hidden (known remainder + all novel)
    test: np.ndarray  # test indices, every class
    tasks: list[list[int]]  # model labels introduced by each incremental task

    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def known(self) -> list[int]:
        return list(range(self.num_known))

    @property
    def novel(self) -> list[int]:
        return list(range(self.num_known, self.num_classes))

    def remap(self, targets: np.ndarray) -> np.ndarray:
        """Dataset class ids -> model labels (position in `class_order`)."""
        lut = np.empty(max(self.class_order) + 1, np.int64)
        lut[self.class_order] = np.arange(len(self.class_order))
        return lut[np.asarray(targets)]


def build_split(
    train_targets: np.ndarray,
    test_targets: np.ndarray,
    num_known: int | None = None,
    class_order: str = "sorted",
    labelled_fraction: float = 1.0,
    val_fraction: float = 0.1,
    num_tasks: int = 1,
    seed: int = 0,
) -> OpenWorldSplit:
    """Build the split; the same arguments always give the same split."""
    train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
    classes = np.unique(train_targets)
    rng = np.random.default_rng(seed)
    order = classes.tolist() if class_order == "sorted" else rng.permutation(classes).tolist()
    k = len(order) if num_known is None else num_known
    if not 1 <= k <= len(order):
        raise UserError(
            f"config key 'data.num_known' = {k}: the dataset has {len(order)} classes; "
            f"choose 1..{len(order)}"
        )
    novel = len(order) - k
    if num_tasks > 1 and novel < num_tasks - 1:
        raise UserError(
            f"config key 'data.num_tasks' = {num_tasks}: {novel} novel classes cannot fill "
            f"{num_tasks - 1} incremental tasks; lower num_tasks or data.num_known"
        )
    labelled, val, unlabelled = [], [], []
    for c in order:
        idx = rng.permutation(np.flatnonzero(train_targets == c))
        if order.index(c) >= k:  # novel: everything goes to the unlabelled pool
            unlabelled.append(idx)
            continue
        n_lab = max(1, int(round(labelled_fraction * len(idx))))
        n_val = int(round(val_fraction * n_lab)) if n_lab > 1 else 0
        val.append(idx[:n_val])
        labelled.append(idx[n_val:n_lab])
        unlabelled.append(idx[n_lab:])
    tasks = [list(range(k))]
    if num_tasks > 1:
        tasks += [t.tolist() for t in np.array_split(np.arange(k, len(order)), num_tasks - 1)]
    return OpenWorldSplit(
        class_order=[int(c) for c in order],
        num_known=k,
        labelled=_sorted_union(labelled),
        val=_sorted_union(val),
        unlabelled=_sorted_union(unlabelled),
        test=np.flatnonzero(np.isin(test_targets, classes)).astype(np.int64),
        tasks=tasks,
    )


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
