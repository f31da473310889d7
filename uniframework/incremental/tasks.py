"""The task sequence of a class-incremental run, from the split or from the discover stage.

- source "split" (the usual class-incremental protocol, benchmarks only): task 0 = the known
  classes (their labelled images); task t >= 1 = the split's t-th group of novel classes,
  trained on their images from the unlabelled pool with their true labels.
- source "discover": task 0 as above; the discovered novel classes (model labels k..k+n-1)
  are spread over `data.num_tasks - 1` tasks (at least one), trained on the pool images the
  discover stage assigned to them, with its pseudo-labels. On the test set a true novel class
  is mapped to its discovered label through the inverse of the Hungarian `mapping`; a class no
  cluster was matched to gets UNMATCHED (always wrong).
  When a person named the clusters (`discover/labels.json`, the label page), the named classes
  replace the clusters: merged clusters are one class, rejected ones are left out, each part
  of a split cluster is learned as the class it was given (`discover/labels.py`); a merged
  class is right for the true class of any of its clusters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import OpenWorldData
from ..discover.labels import LABELS, inverse_mapping, output_truth, read_discovered
from ..errors import UserError
from ..io import read_json
from .metrics import UNMATCHED

log = logging.getLogger(__name__)


@dataclass
class TaskPlan:
    num_known: int
    tasks: list[list[int]]  # model labels introduced by each task
    train_index: list[np.ndarray]  # train-set dataset indices of each task's images
    train_labels: list[np.ndarray]  # their labels (true, or pseudo-labels from discover)
    test_labels: np.ndarray  # model label of each image of split.test (UNMATCHED possible)
    class_names: list[str]
    labels: dict | None = None  # what the person's names did (source discover with labels)
    # source discover: model label -> the true classes it is right for (merged: several)
    output_truth: dict[int, list[int]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return sum(len(t) for t in self.tasks)

    def seen(self, t: int) -> int:
        """Classes seen after task t."""
        return sum(len(c) for c in self.tasks[: t + 1])

    def test_counts(self) -> np.ndarray:
        """Test images of each task's classes, [T]."""
        return np.array([np.isin(self.test_labels, c).sum() for c in self.tasks])


def plan_from_split(data: OpenWorldData) -> TaskPlan:
    split = data.split
    if data.user_mode:  # this protocol is told the pool's classes
        raise UserError(
            "stages.incremental.source = split learns the unlabelled images by their true "
            "classes, which an unlabelled folder does not have: use source: discover (the "
            "groups the discover stage found, named on the label page)"
        )
    if len(split.tasks) < 2:
        raise UserError(
            "the incremental stage needs at least 2 tasks: set data.num_tasks >= 2 and "
            "data.num_known below the class count (task 0 = the known classes)"
        )
    pool_labels = data.pool_truth(split.unlabelled)
    index, labels = [split.labelled], [split.remap(data.train.targets[split.labelled])]
    for classes in split.tasks[1:]:
        keep = np.isin(pool_labels, classes)
        index.append(split.unlabelled[keep])
        labels.append(pool_labels[keep])
    return TaskPlan(
        split.num_known,
        [list(c) for c in split.tasks],
        index,
        labels,
        split.remap(data.test.targets[split.test]),
        data.class_names,
    )


def plan_from_discover(data: OpenWorldData, path: Path) -> TaskPlan:
    split = data.split
    if not path.is_file():
        raise UserError(
            f"stages.incremental.source = discover needs '{path}', written by the discover "
            "stage: put `- discover: {}` before `- incremental` in stages, or set "
            "stages.incremental.source=split"
        )
    raw = read_json(path)
    missing = {"num_known", "num_novel", "index", "label", "mapping"} - set(raw)
    if missing:
        raise UserError(f"'{path}' lacks {sorted(missing)}: rerun the discover stage")
    k = int(raw["num_known"])
    if k != split.num_known:
        raise UserError(
            f"'{path}' was written for num_known = {k}, but data.num_known = {split.num_known}: "
            "rerun discover (--restart-from discover) with this config"
        )
    disc = read_discovered(path, data.class_names[:k])  # the person's names, when given
    n = int(disc["num_novel"])
    idx, lab = np.asarray(disc["index"], np.int64), np.asarray(disc["label"], np.int64)
    if len(idx) != len(lab) or (len(idx) and (idx.min() < 0 or idx.max() >= len(data.train))):
        raise UserError(f"'{path}': 'index' must be train-set indices, one per 'label'")
    if len(lab) and (lab.min() < k or lab.max() >= k + n):
        raise UserError(f"'{path}': every 'label' must lie in {k}..{k + n - 1}")
    num_tasks = max(1, data.cfg.num_tasks - 1)
    if n < num_tasks:
        raise UserError(
            f"data.num_tasks = {data.cfg.num_tasks}: {n} discovered classes cannot fill "
            f"{num_tasks} incremental tasks; lower data.num_tasks"
        )
    novel_tasks = [t.tolist() for t in np.array_split(np.arange(k, k + n), num_tasks)]
    index, labels = [split.labelled], [split.remap(data.train.targets[split.labelled])]
    for classes in novel_tasks:
        keep = np.isin(lab, classes)
        index.append(idx[keep])
        labels.append(lab[keep])
    # test: true novel class -> discovered label (inverse Hungarian mapping), else UNMATCHED
    inverse = inverse_mapping(disc)
    true = split.remap(data.test.targets[split.test])
    test = np.array([t if t < k else inverse.get(int(t), UNMATCHED) for t in true], np.int64)
    names = list(disc.get("class_names") or [f"novel {j}" for j in range(n)])
    used = None
    if "labels_sha256" in disc:
        log.info("incremental: the classes named in %s", path.parent / LABELS)
        used = {
            "sha256": disc["labels_sha256"],
            "named_classes": n,
            "merged_clusters": sum(len(c) for c in disc["clusters"].values()) - n,
            "rejected_clusters": len(disc["rejected"]),
            "split_clusters": len(disc.get("splits", {})),
        }
    return TaskPlan(
        k,
        [list(range(k)), *novel_tasks],
        index,
        labels,
        test,
        data.class_names[:k] + names,
        used,
        output_truth(disc),
    )
