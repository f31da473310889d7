"""Class-incremental metrics on a hand-made accuracy matrix."""

import math

import numpy as np
import pytest
import torch

from uniframework.incremental.metrics import (
    UNMATCHED,
    final_accuracies,
    forgetting,
    seen_accuracy,
    summarize,
    task_accuracies,
)

NAN = float("nan")
A = np.array([[0.9, NAN, NAN], [0.6, 0.8, NAN], [0.3, 0.5, 0.7]])
COUNTS = np.array([10, 10, 20])


def test_seen_accuracy_weights_tasks_by_their_test_images():
    assert np.allclose(seen_accuracy(A, COUNTS), [0.9, 0.7, (3 + 5 + 14) / 40])


def test_forgetting_is_best_minus_final_over_old_tasks():
    assert math.isclose(forgetting(A), ((0.9 - 0.3) + (0.8 - 0.5)) / 2)
    assert forgetting(A[:1, :1]) == 0.0
    better = np.array([[0.5, NAN], [0.7, 0.9]])  # backward transfer: negative forgetting
    assert math.isclose(forgetting(better), -0.2)


def test_summarize_names_every_metric():
    m = summarize(A, COUNTS, "nme_")
    assert math.isclose(m["nme_avg_acc"], (0.9 + 0.7 + 0.55) / 3)
    assert math.isclose(m["nme_last_acc"], 0.55) and math.isclose(m["nme_task1_acc"], 0.7)
    assert math.isclose(m["nme_forgetting"], 0.45)


def test_task_accuracies_and_final_accuracies():
    labels = torch.tensor([0, 0, 1, 2, 3, UNMATCHED])
    pred = torch.tensor([0, 1, 1, 2, 2, 3])
    tasks = [[0, 1], [2, 3]]
    assert task_accuracies(pred, labels, tasks, 0) == pytest.approx([2 / 3])
    assert task_accuracies(pred, labels, tasks, 1) == pytest.approx([2 / 3, 1 / 2])
    f = final_accuracies(pred, labels, num_known=2)
    # the UNMATCHED image (a novel class never discovered) is wrong whatever is predicted
    assert math.isclose(f["all_acc"], 3 / 6, rel_tol=1e-6) and math.isclose(
        f["old_acc"], 2 / 3, rel_tol=1e-6
    )
    assert math.isclose(f["new_acc"], 1 / 3, rel_tol=1e-6)
