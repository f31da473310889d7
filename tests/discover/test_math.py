"""Discovery math: Hungarian metrics, Sinkhorn marginals, OpenMix targets, k-means / estimate."""

import numpy as np
import pytest
import torch

from uniframework.discover.clustering import (
    estimate_by_silhouette,
    estimate_num_classes,
    estimate_num_novel,
    kmeans,
    semi_supervised_kmeans,
)
from uniframework.discover.metrics import (
    cluster_acc,
    clustering_metrics,
    gcd_accuracy,
    hungarian_mapping,
)
from uniframework.discover.openmix import anchor_target, mixed_target
from uniframework.discover.sinkhorn import sinkhorn_knopp


def test_hungarian_accuracy_is_one_on_a_permuted_perfect_clustering():
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([7, 7, 3, 3, 5, 5, 5])  # a relabelling of the truth
    assert cluster_acc(truth, pred) == 1.0
    assert hungarian_mapping(truth, pred) == {7: 0, 3: 1, 5: 2}
    m = clustering_metrics(truth, pred)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)


def test_hungarian_accuracy_is_invariant_to_label_permutation():
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    perm = rng.permutation(4)
    assert cluster_acc(truth, pred) == cluster_acc(truth, perm[pred])
    assert cluster_acc(truth, pred) == cluster_acc(perm[truth], pred)


def test_hungarian_accuracy_by_hand():
    # cluster 0 holds {a, a, b}, cluster 1 holds {b, b, a}: best map 0->a, 1->b, 4 of 6 right
    truth = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 0, 1, 1, 1])
    assert cluster_acc(truth, pred) == pytest.approx(4 / 6)
    # more clusters than classes: the extra cluster maps to nothing and counts as wrong
    assert cluster_acc([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(3 / 4)


@pytest.mark.parametrize("n,k", [(64, 4), (30, 6), (8, 8)])
def test_sinkhorn_rows_and_columns_sum_to_the_marginals(n, k):
    torch.manual_seed(0)
    q = sinkhorn_knopp(torch.randn(n, k), epsilon=0.5, iters=50)
    assert torch.allclose(q.sum(1), torch.ones(n), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((k,), n / k), atol=1e-3)
    assert (q >= 0).all()


def test_sinkhorn_on_bf16_scores_works_in_fp32():
    """Under `trainer.precision: bf16-mixed` the cosine scores arrive in bfloat16; the
    assignments are computed in fp32 and are those of the same scores given as fp32."""
    torch.manual_seed(0)
    scores = torch.randn(32, 5).bfloat16()
    q = sinkhorn_knopp(scores, epsilon=0.05, iters=3)
    assert q.dtype == torch.float32
    assert torch.allclose(q.sum(1), torch.ones(32), atol=1e-5)
    torch.testing.assert_close(q, sinkhorn_knopp(scores.float(), epsilon=0.05, iters=3))


def test_sinkhorn_spreads_a_batch_that_prefers_one_cluster():
    logits = torch.zeros(40, 4)
    logits[:, 0] = 0.2  # every sample leans to cluster 0
    logits[:, 1:] += torch.linspace(0, 0.1, 40)[:, None] * torch.tensor([1.0, -1.0, 0.5])
    plain = logits.softmax(1).sum(0)
    q = sinkhorn_knopp(logits, epsilon=0.05, iters=3)
    assert plain.argmax() == 0 and q.sum(0).max() < 1.5 * 40 / 4


def test_mixed_target_matches_a_hand_computation():
    y = torch.tensor([1, 0])
    p = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    t = mixed_target(y, p, lam=0.3, num_known=2)
    expected = torch.tensor(
        [[0.0, 0.3, 0.35, 0.35, 0.0], [0.3, 0.0, 0.07, 0.14, 0.49]],
    )
    assert torch.allclose(t, expected)
    assert torch.allclose(t.sum(1), torch.ones(2)) and (t >= 0).all()


def test_anchor_target_puts_the_anchor_class_and_the_partner_distribution():
    anchor = torch.tensor([[0.05, 0.9, 0.05]])
    partner = torch.tensor([[0.2, 0.2, 0.6]])
    t = anchor_target(anchor, partner, lam=0.6, num_known=2)
    assert torch.allclose(t, torch.tensor([[0.0, 0.0, 0.08, 0.68, 0.24]]))
    assert torch.allclose(t.sum(1), torch.ones(1))


def _blobs(centres, n, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + 0.05 * rng.standard_normal((n, len(c))) for c in centres])
    y = np.repeat(np.arange(len(centres)), n)
    return torch.from_numpy(x).float(), torch.from_numpy(y)


def test_kmeans_recovers_separated_directions_and_the_estimate_finds_their_number():
    eye = np.eye(7)
    known, y_known = _blobs(eye[:3], 30)
    novel, y_novel = _blobs(eye[3:], 30, seed=1)  # 4 novel directions
    km = kmeans(novel, 4)
    assert cluster_acc(y_novel.numpy(), km.labels_) == 1.0
    n, scores = estimate_num_novel(known, y_known, novel, range(1, 8))
    assert n == 4, scores


def test_gcd_accuracy_is_one_hungarian_map_over_all_classes():
    # classes 0, 1 old (num_known = 2), 2, 3 new; 8 pool images
    truth = [0, 0, 1, 1, 2, 2, 3, 3]
    pred = [5, 5, 6, 7, 7, 7, 8, 5]
    # contingency: cluster 5 -> {0: 2, 3: 1}, 6 -> {1: 1}, 7 -> {1: 1, 2: 2}, 8 -> {3: 1};
    # the best one-to-one map: 5->0, 6->1, 7->2, 8->3 (2 + 1 + 2 + 1 = 6 right)
    # right per image: T T T F T T T F  -> all 6/8, old 3/4, new 3/4
    assert gcd_accuracy(truth, pred, num_known=2) == {"all": 0.75, "old": 0.75, "new": 0.75}
    # one assignment over all classes, not one per split: a cluster used by the old classes
    # cannot also count for a new class (per-split maps would give new = 1.0 here)
    got = gcd_accuracy([0, 0, 2, 2], [1, 1, 1, 1], num_known=1)
    assert got == {"all": 0.5, "old": 1.0, "new": 0.0}


def test_semi_supervised_kmeans_keeps_the_labelled_classes_and_finds_new_ones():
    eye = np.eye(8)
    labelled, y = _blobs(eye[:3], 20)
    pool_known, t_known = _blobs(eye[:3], 10, seed=2)
    pool_novel, t_novel = _blobs(eye[3:6], 10, seed=3)
    pool = torch.cat([pool_known, pool_novel])
    truth = np.concatenate([t_known.numpy(), t_novel.numpy() + 3])
    assign, centres = semi_supervised_kmeans(labelled, y, pool, num_clusters=6)
    assert centres.shape == (6, 8)
    assert (assign[:30] == truth[:30]).all()  # known images join their labelled class
    assert (assign[30:] >= 3).all()  # novel images go to new clusters
    assert gcd_accuracy(truth, assign, num_known=3)["all"] == 1.0


def test_the_gcd_estimate_finds_the_number_of_separated_clusters():
    eye = np.eye(10)
    labelled, y = _blobs(eye[:4], 25)
    pool = torch.cat([_blobs(eye[:4], 10, seed=1)[0], _blobs(eye[4:9], 20, seed=2)[0]])
    n, scores = estimate_num_classes(labelled, y, pool, max_novel=8)
    assert n == 5, scores
    assert scores[5] == 1.0 and min(scores.values()) < 1.0


def test_the_silhouette_estimate_finds_separated_clusters_and_prefers_the_finer_tie():
    eye = np.eye(9)
    pool, _ = _blobs(eye[:5], 30, seed=3)  # 5 novel directions
    n, scores = estimate_by_silhouette(pool, range(1, 9))
    assert n == 5 and 1 not in scores, scores  # one cluster has no silhouette
    assert scores[5] == max(scores.values()) and scores[6] < scores[5] - 0.02
    # two of the five nearly merged: the argmax says 4, the tolerance keeps the finer 5
    close = eye[:5].copy()
    close[4] = 0.9 * eye[3] + np.sqrt(1 - 0.9**2) * eye[4]  # cosine 0.9
    pool = _blobs(close, 30, seed=4)[0]
    assert estimate_by_silhouette(pool, range(2, 9), tolerance=0.0)[0] == 4
    n, scores = estimate_by_silhouette(pool, range(2, 9), tolerance=0.05)
    assert n == 5, scores
