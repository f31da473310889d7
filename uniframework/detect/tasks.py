"""ORE's open-world protocol, built by code: which classes each task introduces.

Task t adds its classes to the known set; every class of no task yet is *unknown* at task t —
present in the images, never labelled (ORE §5: the future tasks' classes and the classes of no
task at all). Training images are split into one disjoint chunk per task (as OWOD's per-task
image lists).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError, did_you_mean


@dataclass
class TaskProtocol:
    """`tasks[t]`: dataset class indices that task t introduces; `classes`: dataset names."""

    classes: list[str]
    tasks: list[list[int]]

    @property
    def order(self) -> list[int]:
        """Every class that is ever known, in order of introduction (the model's class order)."""
        return [c for task in self.tasks for c in task]

    def seen(self, t: int) -> list[int]:
        """Known classes after task t (tasks 0..t)."""
        return [c for task in self.tasks[: t + 1] for c in task]

    def previous(self, t: int) -> list[int]:
        return [c for task in self.tasks[:t] for c in task]

    def unknown(self, t: int) -> list[int]:
        """Classes unknown at task t: later tasks' and those of no task."""
        seen = set(self.seen(t))
        return [c for c in range(len(self.classes)) if c not in seen]


def build_protocol(
    classes: list[str],
    tasks: list[list[str]] | None = None,
    task_sizes: list[int] | None = None,
    class_order: str = "sorted",
    seed: int = 0,
) -> TaskProtocol:
    """Explicit `tasks` (lists of class names), or `task_sizes` over the classes in `sorted`
    or seeded `random` order (the classes left over are never known)."""
    if tasks:
        index = {c: k for k, c in enumerate(classes)}
        out, used = [], set()
        for t, names in enumerate(tasks):
            if not names:
                raise UserError(f"option 'tasks' entry {t} is empty: give each task its classes")
            ids = []
            for name in names:
                name = str(name)
                if name not in index:
                    raise UserError(
                        f"option 'tasks' names class '{name}' (task {t + 1}), which the dataset "
                        f"does not have{did_you_mean(name, classes)}. Classes: "
                        f"{', '.join(classes)}. Fix the task list."
                    )
                if name in used:
                    raise UserError(
                        f"option 'tasks': class '{name}' is in two tasks; each class is "
                        "introduced once"
                    )
                used.add(name)
                ids.append(index[name])
            out.append(ids)
        return TaskProtocol(list(classes), out)
    sizes = list(task_sizes or [])
    if not sizes or min(sizes) < 1:
        raise UserError("option 'task_sizes' must list at least one task of >= 1 class")
    if sum(sizes) > len(classes):
        raise UserError(
            f"option 'task_sizes' = {sizes} asks for {sum(sizes)} classes but the dataset has "
            f"{len(classes)}; lower the sizes"
        )
    order = list(range(len(classes)))
    if class_order == "random":
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(classes))]
    starts = np.cumsum([0] + sizes)
    return TaskProtocol(list(classes), [order[a:b] for a, b in zip(starts[:-1], starts[1:])])


def split_images(n: int, num_tasks: int, seed: int) -> list[np.ndarray]:
    """A seeded partition of `n` training images into `num_tasks` disjoint sorted chunks."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(chunk) for chunk in np.array_split(perm, num_tasks)]
