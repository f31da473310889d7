"""Herding (iCaRL Alg. 4) and the exemplar memory's budget (Alg. 5, reduce)."""

import json

import pytest
import torch
import torch.nn.functional as F

from uniframework.errors import UserError
from uniframework.incremental.memory import ExemplarMemory, herding


def naive_herding(features: torch.Tensor, m: int) -> list[int]:
    """iCaRL's selection written out sample by sample."""
    x = [f / f.norm() for f in features]
    mu = sum(x) / len(x)
    picked = []
    for k in range(1, min(m, len(x)) + 1):
        best, best_d = None, float("inf")
        for i, xi in enumerate(x):
            if i in picked:
                continue
            d = float((mu - (sum((x[j] for j in picked), torch.zeros_like(mu)) + xi) / k).norm())
            if d < best_d:
                best, best_d = i, d
        picked.append(best)
    return picked


def test_herding_first_pick_is_nearest_the_mean_and_matches_the_paper():
    feats = torch.randn(40, 6).double()
    order = herding(feats, 10)
    x = F.normalize(feats, dim=1)
    assert int(order[0]) == int((x - x.mean(0)).norm(dim=1).argmin())
    assert order.tolist() == naive_herding(feats, 10)


def test_herding_is_deterministic_without_repeats_and_clips_m():
    feats = torch.randn(25, 4)
    assert torch.equal(herding(feats, 12), herding(feats.clone(), 12))
    full = herding(feats, 100)  # m > N: every sample once
    assert sorted(full.tolist()) == list(range(25)) and full.dtype == torch.long


def test_herding_mean_is_closer_than_random_subsets():
    torch.manual_seed(1)
    feats = torch.randn(200, 16)
    x = F.normalize(feats, dim=1)
    mu = x.mean(0)
    herd = (x[herding(feats, 10)].mean(0) - mu).norm()
    rand = torch.stack([(x[torch.randperm(200)[:10]].mean(0) - mu).norm() for _ in range(50)])
    assert herd < rand.min()


def test_memory_budget_holds_across_tasks_and_old_classes_keep_a_prefix():
    torch.manual_seed(0)
    mem = ExemplarMemory(20)
    before: dict[int, list[int]] = {}
    for t in range(5):  # 5 tasks of 2 classes, 30 images per class
        labels = torch.arange(60) % 2 + 2 * t
        index = torch.arange(60) + 1000 * t  # dataset indices, not positions
        mem.update(torch.randn(60, 8), labels, index)
        seen = 2 * (t + 1)
        assert len(mem) <= 20 and mem.classes == list(range(seen))
        for c in range(seen):
            kept = mem.class_index(c).tolist()
            assert len(kept) == 20 // seen
            if c in before:  # iCaRL's reduce: a prefix of the earlier herding order
                assert kept == before[c][: len(kept)]
            before[c] = kept
        assert torch.equal(
            mem.labels, torch.tensor([c for c in mem.classes for _ in range(20 // seen)])
        )
        assert all(int(i) // 1000 == int(c) // 2 for i, c in zip(mem.index, mem.labels))
    again = ExemplarMemory.from_state_dict(json.loads(json.dumps(mem.state_dict())))
    assert torch.equal(again.index, mem.index) and torch.equal(again.labels, mem.labels)


def test_memory_per_class_and_too_small_budget():
    mem = ExemplarMemory(3, per_class=True)
    mem.update(torch.randn(40, 4), torch.arange(40) % 4, torch.arange(40))
    assert len(mem) == 12
    small = ExemplarMemory(3)
    with pytest.raises(UserError, match="memory"):
        small.update(torch.randn(40, 4), torch.arange(40) % 4, torch.arange(40))
