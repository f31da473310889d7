"""The open-world split, built by code from a seed — never from hand-made path lists.

Classes are put in an order (sorted, or shuffled by the seed); the model's label `i` is the
class `class_order[i]`. The first `num_known` are known, the rest novel:

    train set = labelled (known, minus val) + val (held-out known) + unlabelled pool
    unlabelled pool = the known images left unlabelled + every novel image (label shown as -1)
                      (`pool_novel_share`: subsampled, class-balanced, to that share of novel)
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
        """Dataset class ids -> model labels (position in `class_order`); a hidden label
        (`UNKNOWN`, negative) stays `UNKNOWN`."""
        lut = np.empty(max(self.class_order) + 1, np.int64)
        lut[self.class_order] = np.arange(len(self.class_order))
        targets = np.asarray(targets, np.int64)
        return np.where(targets < 0, UNKNOWN, lut[np.maximum(targets, 0)])


def build_split(
    train_targets: np.ndarray,
    test_targets: np.ndarray,
    num_known: int | None = None,
    class_order: str = "sorted",
    labelled_fraction: float = 1.0,
    val_fraction: float = 0.1,
    num_tasks: int = 1,
    seed: int = 0,
    pool_novel_share: float | None = None,
) -> OpenWorldSplit:
    """Build the split; the same arguments always give the same split. `pool_novel_share`
    (0 < s <= 1) makes the unlabelled pool that share novel: the larger part (the known
    classes' unlabelled images or the novel ones) is subsampled, the same fraction from each of
    its classes; images left out are used nowhere."""
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
    labelled, val, pool_known, pool_novel = [], [], [], []
    for c in order:
        idx = rng.permutation(np.flatnonzero(train_targets == c))
        if order.index(c) >= k:  # novel: everything goes to the unlabelled pool
            pool_novel.append(idx)
            continue
        n_lab = max(1, int(round(labelled_fraction * len(idx))))
        n_val = int(round(val_fraction * n_lab)) if n_lab > 1 else 0
        val.append(idx[:n_val])
        labelled.append(idx[n_val:n_lab])
        pool_known.append(idx[n_lab:])
    if pool_novel_share is not None:
        pool_known, pool_novel = _to_share(pool_known, pool_novel, pool_novel_share)
    tasks = [list(range(k))]
    if num_tasks > 1:
        tasks += [t.tolist() for t in np.array_split(np.arange(k, len(order)), num_tasks - 1)]
    return OpenWorldSplit(
        class_order=[int(c) for c in order],
        num_known=k,
        labelled=_sorted_union(labelled),
        val=_sorted_union(val),
        unlabelled=_sorted_union(pool_known + pool_novel),
        test=np.flatnonzero(np.isin(test_targets, classes)).astype(np.int64),
        tasks=tasks,
    )


def build_user_split(
    train_targets: np.ndarray,
    test_targets: np.ndarray,
    num_classes: int,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> OpenWorldSplit:
    """The split of a person's own folders: the labelled images (targets 0..k-1, one class
    folder each) are the known classes, minus a held-out `val_fraction` of each; every
    unlabelled image (target `UNKNOWN`: it has no label anywhere) is the pool; the test set
    (optional) may hold classes beyond the known ones (k..`num_classes` - 1), which are novel.
    Nothing here knows how many new classes the pool holds: that is what the run finds."""
    train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
    k = int(train_targets.max()) + 1 if (train_targets >= 0).any() else 0
    rng = np.random.default_rng(seed)
    labelled, val = [], []
    for c in range(k):
        idx = rng.permutation(np.flatnonzero(train_targets == c))
        n_val = int(round(val_fraction * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        labelled.append(idx[n_val:])
    return OpenWorldSplit(
        class_order=list(range(num_classes)),
        num_known=k,
        labelled=_sorted_union(labelled),
        val=_sorted_union(val),
        unlabelled=np.flatnonzero(train_targets == UNKNOWN).astype(np.int64),
        test=np.arange(len(test_targets), dtype=np.int64),
        tasks=[list(range(k))],  # the new classes come from the discover stage
    )


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)


def _to_share(
    known: list[np.ndarray], novel: list[np.ndarray], share: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Subsample one side (per class, each already shuffled) so novel / (known + novel) = share."""
    n_known, n_novel = sum(map(len, known)), sum(map(len, novel))
    if n_novel == 0 or (share < 1 and n_known == 0):
        raise UserError(
            f"config key 'data.pool_novel_share' = {share}: the pool holds {n_known} known and "
            f"{n_novel} novel images; it needs both — set data.num_known below the class count "
            "and data.labelled_fraction below 1 (the known images left unlabelled join the pool)"
        )
    if share >= 1:
        return [c[:0] for c in known], novel
    if n_novel / (n_known + n_novel) > share:  # too many novel: keep fewer of them
        keep = share / (1 - share) * n_known / n_novel
        return known, [c[: max(1, int(round(keep * len(c))))] for c in novel]
    keep = (1 - share) / share * n_novel / n_known
    return [c[: int(round(keep * len(c)))] for c in known], novel


def pool_makeup(split: OpenWorldSplit, truth: np.ndarray | None) -> dict[str, float]:
    """How the unlabelled pool was made up, from `truth` (model label of every train image, the
    benchmark's hidden truth; evaluation only): empty without it (a person's own pool)."""
    if truth is None:
        return {}
    novel = truth[split.unlabelled] >= split.num_known
    return {
        "unlabelled_known": int((~novel).sum()),
        "unlabelled_novel": int(novel.sum()),
        "unlabelled_novel_share": float(novel.mean()) if len(novel) else float("nan"),
    }
