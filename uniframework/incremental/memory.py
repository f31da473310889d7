"""Exemplar memory with herding selection (iCaRL, Rebuffi et al. 2017, Alg. 4 and 5).

The memory stores *dataset indices* and labels, never image copies, so it is a few kilobytes of
JSON. Herding picks, for each class, an ordered list of exemplars whose running mean stays as
close as possible to the class mean of the L2-normalised features; the order matters: when the
budget per class shrinks (more classes seen), each old class keeps a prefix of its order
(iCaRL's ReduceExemplarSet), which is again the best herding set of that size.

Under DDP the features are extracted and the selection made on rank 0 only; the stage saves the
memory as an artifact (`state_dict()` is JSON-able) that every rank reads back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL herding: indices into `features` [N, D], in order of selection, [min(m, N)].

    Features are L2-normalised and their mean mu is taken; step k picks the sample x (not
    picked before) minimising || mu - (x + sum of the k-1 picked) / k ||, so the first pick is
    the sample nearest the mean. Deterministic: ties go to the lowest index (argmin).
    """
    if features.ndim != 2:
        raise ValueError(f"herding expects features [N, D], got {tuple(features.shape)}")
    feats = F.normalize(features.detach().double(), dim=1)  # [N, D]; double: stable sums
    n = feats.shape[0]
    m = min(int(m), n)
    mu = feats.mean(0)  # [D]
    picked: list[int] = []
    running = torch.zeros_like(mu)  # sum of the picked features, [D]
    free = torch.ones(n, dtype=torch.bool)
    for k in range(1, m + 1):
        dist = (mu - (running + feats) / k).norm(dim=1)  # [N]: mean error if each x is added
        dist[~free] = float("inf")  # no repeats
        i = int(dist.argmin())
        picked.append(i)
        running += feats[i]
        free[i] = False
    return torch.tensor(picked, dtype=torch.long)


class ExemplarMemory:
    """Per-class herding-ordered exemplars under a budget.

    budget: total number of exemplars K (iCaRL's fixed memory: m = K // classes seen per
    class, rebalanced as classes arrive), or, with `per_class=True`, exemplars per class (the
    total grows with the classes). Indices are dataset indices (e.g. of the train set).
    """

    def __init__(self, budget: int, per_class: bool = False) -> None:
        if budget < 1:
            raise UserError(
                f"option 'memory' = {budget}: the exemplar memory needs a budget >= 1 "
                "(or use learner finetune / lwf, which keep no memory)"
            )
        self.budget, self.per_class = int(budget), bool(per_class)
        self._order: dict[int, list[int]] = {}  # class -> dataset indices in herding order

    @property
    def classes(self) -> list[int]:
        return sorted(self._order)

    def per_class_size(self, num_classes: int | None = None) -> int:
        """Exemplars kept per class when `num_classes` (default: those stored) are seen."""
        c = len(self._order) if num_classes is None else num_classes
        if self.per_class:
            return self.budget
        if c > self.budget:
            raise UserError(
                f"option 'memory' = {self.budget} is smaller than the {c} classes seen: "
                f"each class needs at least one exemplar; raise memory to >= {c} "
                "(or set memory_per_class: true)"
            )
        return self.budget // max(c, 1)

    def update(self, features: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Add (or reselect) the classes in `labels` by herding, then shrink every class to
        the per-class size (old classes keep a prefix of their herding order).

        features: [N, D] features of the new classes' training samples (current model);
        labels: [N] their class labels; index: [N] their dataset indices.
        """
        labels, index = torch.as_tensor(labels).long().cpu(), torch.as_tensor(index).long().cpu()
        if not features.shape[0] == labels.shape[0] == index.shape[0]:
            raise ValueError("features, labels and index must have the same length")
        new = sorted(int(c) for c in labels.unique())
        m = self.per_class_size(len(set(self._order) | set(new)))
        for c in new:
            rows = torch.nonzero(labels == c).flatten()
            order = herding(features[rows].cpu(), m)
            self._order[c] = index[rows[order]].tolist()
        for c in self._order:  # iCaRL ReduceExemplarSet: keep the first m of the order
            self._order[c] = self._order[c][:m]

    def class_index(self, c: int) -> torch.Tensor:
        """Dataset indices of class c's exemplars, in herding order."""
        return torch.tensor(self._order.get(int(c), []), dtype=torch.long)

    @property
    def index(self) -> torch.Tensor:
        """Dataset indices of every exemplar, classes in ascending order, [M]."""
        return torch.tensor([i for c in self.classes for i in self._order[c]], dtype=torch.long)

    @property
    def labels(self) -> torch.Tensor:
        """Class label of each entry of `index`, [M]."""
        return torch.tensor([c for c in self.classes for _ in self._order[c]], dtype=torch.long)

    def __len__(self) -> int:
        return sum(len(v) for v in self._order.values())

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: budget, per_class and each class's indices in herding order."""
        return {
            "budget": self.budget,
            "per_class": self.per_class,
            "classes": {str(c): list(self._order[c]) for c in self.classes},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget, self.per_class = int(state["budget"]), bool(state["per_class"])
        self._order = {int(c): [int(i) for i in v] for c, v in state["classes"].items()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ExemplarMemory:
        mem = cls(int(state["budget"]), bool(state["per_class"]))
        mem.load_state_dict(state)
        return mem
