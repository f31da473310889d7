import numpy as np
import pytest

from uniframework.data.splits import build_split, pool_makeup
from uniframework.errors import UserError

TRAIN = np.repeat(np.arange(10), 50)  # 10 classes x 50 images
TEST = np.repeat(np.arange(10), 10)


def test_parts_are_disjoint_and_cover_the_train_set():
    s = build_split(TRAIN, TEST, num_known=6, labelled_fraction=0.5, val_fraction=0.2, seed=1)
    parts = [s.labelled, s.val, s.unlabelled]
    assert sum(len(p) for p in parts) == len(TRAIN)
    assert len(np.unique(np.concatenate(parts))) == len(TRAIN)
    assert len(s.test) == len(TEST)


def test_counts_follow_the_fractions():
    s = build_split(TRAIN, TEST, num_known=6, labelled_fraction=0.5, val_fraction=0.2, seed=1)
    lab = s.remap(TRAIN[s.labelled])
    assert set(lab) == set(range(6))
    assert np.all(np.bincount(lab) == 20)  # 25 labelled per known class, 5 of them held out
    assert np.all(np.bincount(s.remap(TRAIN[s.val])) == 5)
    unl = s.remap(TRAIN[s.unlabelled])
    assert np.sum(unl < 6) == 6 * 25 and np.sum(unl >= 6) == 4 * 50  # all novel images unlabelled


def test_seeded_and_reproducible():
    a = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.5, class_order="random", seed=3)
    b = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.5, class_order="random", seed=3)
    c = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.5, class_order="random", seed=4)
    assert a.class_order == b.class_order and np.array_equal(a.labelled, b.labelled)
    assert a.class_order != c.class_order or not np.array_equal(a.labelled, c.labelled)
    assert sorted(a.class_order) == list(range(10))


def test_remap_follows_the_class_order():
    s = build_split(TRAIN, TEST, num_known=5, class_order="random", seed=0)
    labels = s.remap(np.array(s.class_order))
    assert labels.tolist() == list(range(10))


def test_tasks_split_the_novel_classes():
    s = build_split(TRAIN, TEST, num_known=2, num_tasks=5, seed=0)
    assert s.tasks == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert build_split(TRAIN, TEST, num_known=4, num_tasks=3).tasks == [
        [0, 1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
    ]


def test_bad_requests_are_user_errors():
    with pytest.raises(UserError, match="num_known"):
        build_split(TRAIN, TEST, num_known=11)
    with pytest.raises(UserError, match="num_tasks"):
        build_split(TRAIN, TEST, num_known=8, num_tasks=4)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_pool_novel_share_sets_the_pools_make_up(share):
    s = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.5, seed=0, pool_novel_share=share)
    makeup = pool_makeup(s, s.remap(TRAIN))
    # 5 known classes leave 25 images each in the pool, 5 novel classes bring 50 each
    assert makeup["unlabelled_known"] + makeup["unlabelled_novel"] == len(s.unlabelled)
    assert makeup["unlabelled_novel_share"] == pytest.approx(share, abs=0.02)
    novel = TRAIN[s.unlabelled][TRAIN[s.unlabelled] >= 5]
    assert len(set(np.bincount(novel)[5:])) == 1  # the same number from each novel class
    assert np.intersect1d(s.unlabelled, np.concatenate([s.labelled, s.val])).size == 0
    # the labelled part does not change with the pool's make-up
    plain = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.5, seed=0)
    assert np.array_equal(s.labelled, plain.labelled) and np.array_equal(s.val, plain.val)


def test_pool_make_up_without_a_share_and_its_errors():
    s = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.8, seed=0)
    assert pool_makeup(s, s.remap(TRAIN)) == {
        "unlabelled_known": 50,  # 5 classes x 10 left unlabelled
        "unlabelled_novel": 250,
        "unlabelled_novel_share": 250 / 300,
    }
    with pytest.raises(UserError, match="labelled_fraction below 1"):
        build_split(TRAIN, TEST, num_known=5, seed=0, pool_novel_share=0.3)
    only_novel = build_split(TRAIN, TEST, num_known=5, labelled_fraction=0.5, pool_novel_share=1)
    assert pool_makeup(only_novel, only_novel.remap(TRAIN))["unlabelled_known"] == 0
