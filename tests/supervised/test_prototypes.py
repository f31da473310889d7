"""ORE contrastive clustering: feature store, prototype update, hinge loss, DDP helpers."""

from collections import deque

import pytest
import torch
import torch.distributed as dist

from uniframework.supervised.prototypes import (
    FeatureStore,
    contrastive_clustering_loss,
    sync_prototypes,
    update_prototypes,
)


def test_store_fifo_and_capacity():
    store = FeatureStore(num_classes=2, dim=1, items_per_class=3)
    store.update(torch.tensor([[1.0], [2.0]]), torch.tensor([0, 0]))
    assert store.items(0).flatten().tolist() == [1.0, 2.0]
    store.update(torch.tensor([[3.0], [10.0], [4.0], [5.0], [9.0]]), torch.tensor([0, 1, 0, 0, -1]))
    assert store.items(0).flatten().tolist() == [3.0, 4.0, 5.0]  # oldest (1, 2) dropped
    assert store.items(1).flatten().tolist() == [10.0]  # label -1 skipped
    store.update(torch.arange(1.0, 8.0)[:, None], torch.zeros(7, dtype=torch.long))
    assert store.items(0).flatten().tolist() == [5.0, 6.0, 7.0]  # batch larger than Q
    assert store.count.tolist() == [3, 1]
    means, valid = store.means()
    assert means.flatten().tolist() == [6.0, 10.0] and valid.tolist() == [True, True]
    assert {"queue", "ptr", "count"} <= set(store.state_dict())


def test_store_matches_deque_reference():
    g = torch.Generator().manual_seed(0)
    store, ref = FeatureStore(4, 2, items_per_class=5), [deque(maxlen=5) for _ in range(4)]
    for _ in range(12):
        n = int(torch.randint(1, 15, (1,), generator=g))
        f, y = torch.randn(n, 2, generator=g), torch.randint(-1, 4, (n,), generator=g)
        store.update(f, y)
        for row, label in zip(f, y.tolist(), strict=True):
            if label >= 0:
                ref[label].append(row)
    for c in range(4):
        expected = torch.stack(list(ref[c])) if ref[c] else torch.zeros(0, 2)
        assert torch.equal(store.items(c), expected)


def test_update_prototypes_hand():
    p = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]])
    m = torch.tensor([[3.0, 1.0], [2.0, 2.0], [9.0, 9.0]])
    out = update_prototypes(p, m, momentum=0.5, valid=torch.tensor([True, True, False]))
    assert out.tolist() == [[2.0, 1.0], [1.0, 1.0], [5.0, 5.0]]
    assert torch.equal(update_prototypes(p, m, momentum=0.0), m)  # ORE's initialisation


def _naive_loss(f, y, p, margin, valid):
    terms = []
    for n in range(len(f)):
        if y[n] < 0:
            continue
        for i in range(len(p)):
            if not valid[i]:
                continue
            d = torch.sqrt(((f[n] - p[i]) ** 2).sum())
            terms.append(d if i == y[n] else torch.clamp(margin - d, min=0))
    return torch.stack(terms).mean()


def test_hinge_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    f, p = torch.randn(7, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 1, 2, 3, -1, 1, 0])
    valid = torch.tensor([True, True, False, True])
    for margin in (1.5, 10.0):  # both hinge branches active at 1.5
        loss = contrastive_clustering_loss(f, y, p, margin=margin, valid=valid)
        assert loss.item() == pytest.approx(_naive_loss(f, y, p, margin, valid).item(), rel=1e-5)


def test_hinge_loss_gradient_finite_at_prototype():
    p = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    f = p[:1].clone().requires_grad_(True)  # sits exactly on its prototype
    contrastive_clustering_loss(f, torch.tensor([0]), p, margin=10.0).backward()
    assert torch.isfinite(f.grad).all()
    assert contrastive_clustering_loss(f, torch.tensor([-1]), p).item() == 0.0


def test_sync_is_noop_without_dist_and_averages_with_one_rank(tmp_path):
    p = torch.randn(3, 2)
    assert torch.equal(sync_prototypes(p.clone()), p)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert torch.allclose(sync_prototypes(p.clone()), p)
        store = FeatureStore(2, 2, items_per_class=4)
        store.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 0]))
        means, valid = store.means(sync=True)
        assert means[0].tolist() == [2.0, 3.0] and valid.tolist() == [True, False]
    finally:
        dist.destroy_process_group()


# --- where the defaults follow ORE (Joseph et al., CVPR 2021) and where they do not


def test_update_interval_keeps_owod_ratio_by_default():
    from uniframework.supervised.prototypes import UPDATE_FRACTION, prototype_interval

    assert UPDATE_FRACTION == 3000 / 18000  # OWOD: UPDATE_MU_ITER / task 1's MAX_ITER
    assert prototype_interval(18000) == 3000  # OWOD's own schedule, reproduced
    assert prototype_interval(600) == 100  # a short run keeps OWOD's ratio
    assert prototype_interval(3) == 1  # never 0
    assert prototype_interval(600, every=10) == 10  # an absolute interval wins
    assert prototype_interval(600, fraction=0.5) == 300


def test_normalised_loss_is_invariant_to_feature_scale_raw_is_not():
    g = torch.Generator().manual_seed(0)
    f, p = torch.randn(7, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 1, 2, 3, -1, 1, 0])
    valid = torch.tensor([True, True, False, True])

    def loss(features, prototypes, normalise, margin):
        return contrastive_clustering_loss(features, y, prototypes, margin, valid, normalise).item()

    unit = loss(f, p, True, 1.0)
    assert loss(100 * f, p, True, 1.0) == pytest.approx(unit, rel=1e-5)
    assert loss(100 * f, 0.01 * p, True, 1.0) == pytest.approx(unit, rel=1e-5)
    assert loss(100 * f, p, False, 10.0) > 2 * loss(f, p, False, 10.0)  # raw: scale-bound
    # the normalised loss is the paper's hinge on unit vectors (the naive loop above)
    fn, pn = torch.nn.functional.normalize(f, dim=1), torch.nn.functional.normalize(p, dim=1)
    assert unit == pytest.approx(_naive_loss(fn, y, pn, 1.0, valid).item(), rel=1e-5)


def test_margin_defaults_per_feature_space():
    from uniframework.supervised.prototypes import hinge_margin

    assert hinge_margin(None) == hinge_margin(None, "raw") == 10.0  # the paper's
    assert hinge_margin(None, "normalised") == 1.0
    assert hinge_margin(0.5, "normalised") == 0.5 and hinge_margin(3.0, "raw") == 3.0
    with pytest.raises(ValueError, match="at most 2"):  # unit vectors are never 10 apart
        hinge_margin(10.0, "normalised")
