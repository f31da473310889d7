"""Counting the novel classes with one Sinkhorn head per candidate count (`estimate_on: heads`)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from uniframework.discover.clustering import (
    best_partition,
    count_by_consensus,
    head_partitions,
    kmeans,
    refine_partition,
    spectral_gaps,
)
from uniframework.discover.openmix import OpenMixModule
from uniframework.discover.stage import DiscoverOptions, novel_head_from
from uniframework.discover.uno import UNOModule

from .test_overcluster import _batch, _model, _step


def _blobs(centres: int, per: int, dim: int = 8, spread: float = 0.05, seed: int = 0):
    """`centres` well-separated directions (one-hot axes), `per` points around each:
    features [centres * per, dim] and their true labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(centres), per)
    x = np.eye(dim)[labels] + spread * rng.standard_normal((len(labels), dim))
    return torch.from_numpy(x).float(), labels


def test_best_partition_prefers_the_true_one_over_a_merge_and_a_split():
    x, truth = _blobs(4, 30)
    merged = np.where(truth == 3, 2, truth)  # two classes in one cluster
    split = truth.copy()
    split[::2][truth[::2] == 0] = 4  # every other point of class 0 in a cluster of its own
    n, scores = best_partition(x, {3: merged, 4: truth, 5: split})
    assert n == 4, scores
    assert scores[4] > 0.8 and scores[4] > scores[3] and scores[4] > scores[5]
    # the tolerance takes the largest count within it of the best
    n, _ = best_partition(x, {3: merged, 4: truth, 5: split}, tolerance=2.0)
    assert n == 5
    # one cluster has no silhouette: it scores -1, never the best
    n, scores = best_partition(x, {1: np.zeros(len(x), int), 4: truth})
    assert n == 4 and scores[1] == -1.0


def test_refine_partition_moves_a_corrupted_partition_back_to_the_blobs():
    x, truth = _blobs(4, 30)
    noisy = truth.copy()
    noisy[::3] = (truth[::3] + 1) % 4  # a third of the points in the wrong cluster
    refined = refine_partition(x, noisy)
    assert (refined == truth).all()  # started from the clusters' means: same cluster ids


@pytest.mark.parametrize("groups", [3, 5])
def test_the_largest_spectral_gap_is_at_the_number_of_separated_groups(groups):
    x, _ = _blobs(groups, 25)
    gaps = spectral_gaps(x, range(2, 8), neighbours=10)
    assert max(gaps, key=gaps.get) == groups, gaps
    # disconnected groups: the first `groups` eigenvalues are all 0, so no gap before it
    assert gaps[groups] > 0.1 and all(abs(v) < 1e-6 for c, v in gaps.items() if c < groups)


def _close_pair(seed: int = 0):
    """Four blobs: e0, e1, e2 and e2 + 0.3 e3 (close to the third, but apart from it)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:4].copy()
    centres[3] = centres[2] + 0.3 * np.eye(8)[3]
    labels = np.repeat(np.arange(4), 40)
    x = centres[labels] + 0.03 * rng.standard_normal((len(labels), 8))
    return torch.from_numpy(x).float(), labels


def test_count_by_consensus_keeps_a_close_pair_apart_where_the_silhouette_merges_it():
    x, _ = _close_pair()
    parts = {c: kmeans(x, c).labels_ for c in range(2, 7)}
    n, silhouettes, gaps = count_by_consensus(x, parts)
    assert max(silhouettes, key=silhouettes.get) == 3  # the silhouette alone merges the pair
    assert max(gaps, key=gaps.get) == 4
    assert n == 4
    assert set(silhouettes) == set(gaps) == set(parts)


def test_count_by_consensus_reads_only_the_counts_a_small_pool_can_hold():
    x, truth = _blobs(3, 2)  # 6 images: counts 2..5 can be scored, 6 and more cannot
    parts = {c: np.arange(6) % c for c in range(2, 11)}
    parts[3] = truth
    n, silhouettes, gaps = count_by_consensus(x, parts)
    assert set(silhouettes) == set(gaps) == {2, 3, 4, 5} and n in silhouettes
    assert max(silhouettes, key=silhouettes.get) == 3
    with pytest.raises(ValueError, match="no candidate count"):
        count_by_consensus(x[:2], {2: np.array([0, 1])})


def test_count_by_consensus_prefers_the_true_partition_over_a_merge_and_a_split():
    x, truth = _blobs(4, 30)
    merged = np.where(truth == 3, 2, truth)
    split = truth.copy()
    split[::2][truth[::2] == 0] = 4
    n, silhouettes, _ = count_by_consensus(x, {3: merged, 4: truth, 5: split})
    assert n == 4 and silhouettes[4] > 0.8


def test_head_partitions_assign_each_point_to_the_row_of_largest_cosine():
    x, truth = _blobs(3, 10)
    heads = [nn.Linear(8, 3, bias=False), nn.Linear(8, 2, bias=False)]
    with torch.no_grad():
        heads[0].weight.copy_(5.0 * torch.eye(8)[[2, 0, 1]])  # rows: class 2, 0, 1 (any norm)
        heads[1].weight.copy_(torch.eye(8)[[0, 1]])
        heads[1].weight[1, 2] = 0.9  # row 1 = e1 + 0.9 e2
    parts = head_partitions(x, heads)
    assert set(parts) == {3, 2}  # keyed by the head's number of rows
    assert (parts[3] == np.array([1, 2, 0])[truth]).all()
    assert (parts[2] == np.array([0, 1, 1])[truth]).all()  # class 2 nearest to the second row


def test_count_heads_have_their_counts_and_are_not_part_of_the_saved_model():
    torch.manual_seed(0)
    k, n = 2, 4
    module = OpenMixModule(_model(k, n), DiscoverOptions(), num_known=k)
    module.add_count_heads(range(2, 5))
    assert [h.weight.shape for h in module.count_heads] == [(2, 6), (3, 6), (4, 6)]
    norms = torch.cat([h.weight.norm(dim=1) for h in module.count_heads])
    assert torch.allclose(norms, module.model.head.weight[:k].norm(dim=1).mean().expand(9))
    assert not any(key.startswith("count_heads") for key in module.model.state_dict())
    # the optimiser sees them (they are the module's parameters)
    names = {name for name, _ in module.named_parameters()}
    assert {"count_heads.0.weight", "count_heads.2.bias"} <= names


def test_the_chosen_count_head_becomes_the_novel_head_with_the_known_rows_kept():
    torch.manual_seed(3)
    k = 2
    module = OpenMixModule(_model(k, 10), DiscoverOptions(), num_known=k)  # over-counting
    module.add_count_heads(range(2, 6))
    known_w, known_b = module.model.head.weight[:k].clone(), module.model.head.bias[:k].clone()
    chosen = module.count_heads[1]  # 3 outputs
    model = novel_head_from(module.model, k, chosen)
    assert model.num_classes == k + 3 and model.head.weight.shape == (k + 3, 6)
    assert torch.equal(model.head.weight[:k], known_w) and torch.equal(model.head.bias[:k], known_b)
    assert torch.equal(model.head.weight[k:], chosen.weight)
    assert torch.equal(model.head.bias[k:], chosen.bias)
    # the model's novel logits are the head's own outputs on the same features
    x = torch.randn(4, 3, 2, 2)
    model.eval()
    f = model.forward_features(x)
    assert torch.allclose(model(x)[:, k:], chosen(f))


def test_the_over_head_and_a_count_head_share_one_swapped_loss():
    torch.manual_seed(1)
    k, n, b = 2, 3, 8
    module = OpenMixModule(_model(k, n), DiscoverOptions(overcluster=2), num_known=k)
    f1, f2 = torch.randn(b, 6), torch.randn(b, 6)
    known1, known2 = torch.randn(b, k), torch.randn(b, k)
    got = module.swapped_head_loss(module.over_head, f1, f2, known1, known2)
    assert torch.allclose(got, module.overcluster_loss(f1, f2, known1, known2))


@pytest.mark.parametrize("learner", [OpenMixModule, UNOModule])
def test_the_step_adds_the_mean_of_the_count_heads_terms(learner):
    torch.manual_seed(2)
    k, n, b = 2, 3, 8
    batch = _batch(b, k)
    model = _model(k, n)
    plain = learner(copy.deepcopy(model), DiscoverOptions(), num_known=k)
    counted = learner(copy.deepcopy(model), DiscoverOptions(), num_known=k)
    counted.add_count_heads([2, 3, 5])
    base, with_heads = _step(plain, batch, seed=5), _step(counted, batch, seed=5)
    with torch.no_grad():  # the terms on the same weights and train-mode BatchNorm
        l1, _, f1 = counted.views_and_features(batch["pool"][0])
        l2, _, f2 = counted.views_and_features(batch["pool"][1])
        heads = counted.count_heads
        terms = [counted.swapped_head_loss(h, f1, f2, l1[:, :k], l2[:, :k]) for h in heads]
    assert all(t > 0 for t in terms)
    assert torch.allclose(with_heads, base + sum(terms) / 3, atol=1e-5)
    with_heads.backward()  # every head learns
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in heads)
