import json

import pytest
import torch

from uniframework.errors import UserError
from uniframework.openset.detector import Detector, known_threshold
from uniframework.openset.stage import OpensetOptions, _scorer, pick_detector


def _blobs(n: int, seed: int, shift: float = 0.0):
    """8-d features: two known classes at +-4 on the first axis, or (`shift` > 0) unknowns at
    `shift` on the second axis with flat logits. Logits = +-the first feature."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    f = torch.randn(n, 8, generator=g)
    if shift == 0:
        f[:, 0] += torch.where(y == 0, 4.0, -4.0)
    f[:, 1] += shift
    logits = torch.stack([f[:, 0], -f[:, 0]], 1)
    return f, logits, y


def test_known_threshold_keeps_95_percent():
    scores = torch.arange(1, 201, dtype=torch.float32)  # 1..200
    t = known_threshold(scores)
    assert (scores <= t).float().mean().item() == pytest.approx(0.95, abs=0.006)
    assert known_threshold(scores, keep=0.5) == pytest.approx(100.5)


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy", "mahalanobis", "knn"])
def test_every_scorer_decides_and_round_trips(tmp_path, name):
    f, logits, y = _blobs(400, seed=0)
    vf, vl, _ = _blobs(200, seed=1)  # held-out knowns
    uf, ul, _ = _blobs(200, seed=2, shift=6.0)  # unknowns: off the known blobs, flat logits
    scorer = _scorer(name, OpensetOptions(knn_k=5), num_known=2).fit(f, logits, y)
    det = Detector.fit(name, scorer, 2, vf, vl)
    assert det.threshold is not None
    # the threshold keeps 95% of the held-out knowns by construction
    assert det.predict_unknown(vf, vl).float().mean().item() == pytest.approx(0.05, abs=0.011)
    assert det.predict_unknown(uf, ul).float().mean().item() > 0.9  # and catches the unknowns
    det.save(tmp_path)
    info = json.loads((tmp_path / "detector.json").read_text())
    assert info["name"] == name and info["keep_known"] == 0.95
    assert (tmp_path / "detector.safetensors").is_file() == (name in ("mahalanobis", "knn"))
    again = Detector.load(tmp_path)
    x, lg = torch.cat([vf, uf]), torch.cat([vl, ul])
    torch.testing.assert_close(again.score(x, lg), det.score(x, lg))
    assert torch.equal(again.predict_unknown(x, lg), det.predict_unknown(x, lg))


def test_energy_weibull_decides_by_its_fits(tmp_path):
    _, logits, y = _blobs(400, seed=0)
    _, ul, _ = _blobs(200, seed=2, shift=6.0)
    scorer = _scorer("energy_weibull", OpensetOptions(), num_known=2)
    scorer.fit(None, torch.cat([logits, ul]), torch.cat([y, torch.full((200,), -1)]))
    det = Detector.fit("energy_weibull", scorer, 2, None, logits)
    assert det.threshold is None
    extra = torch.cat([ul, torch.zeros(200, 1)], 1)  # an extra "unknown" output is sliced off
    assert torch.equal(det.predict_unknown(None, extra), scorer.predict_unknown(ul))
    det.save(tmp_path)
    assert torch.equal(
        Detector.load(tmp_path).predict_unknown(None, ul), det.predict_unknown(None, ul)
    )


def test_missing_old_or_broken_detector(tmp_path):
    assert Detector.load(tmp_path) is None
    (tmp_path / "detector.json").write_text(json.dumps({"name": "msp", "state": {}}))
    with pytest.raises(UserError, match="--restart-from openset"):
        Detector.load(tmp_path)
    f, logits, y = _blobs(100, seed=0)
    det = Detector.fit(
        "knn", _scorer("knn", OpensetOptions(knn_k=3), 2).fit(f, logits, y), 2, f, logits
    )
    det.save(tmp_path)
    (tmp_path / "detector.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="detector.safetensors"):
        Detector.load(tmp_path)


def test_auto_picks_the_scorer_that_flags_more_of_a_mixed_pool():
    """A pool of 200 known + 200 unknown images whose logits look known (only the features
    tell them apart): at the threshold keeping 95% of the held-out knowns, KNN flags about
    0.05 * 200 + 200 of the 400 and MSP about 5% of them all; `auto` picks KNN, reading no
    label of the pool."""
    f, logits, y = _blobs(400, seed=0)
    vf, vl, _ = _blobs(200, seed=1)
    kf, kl, _ = _blobs(200, seed=3)  # the pool's known half
    uf, _, _ = _blobs(200, seed=2, shift=6.0)
    ul = kl.clone()  # the unknowns' logits: as confident as the knowns'
    pool = {"features": torch.cat([kf, uf]), "logits": torch.cat([kl, ul])}
    val = {"features": vf, "logits": vl}
    fitted = {
        name: Detector.fit(
            name, _scorer(name, OpensetOptions(knn_k=5), 2).fit(f, logits, y), 2, vf, vl
        )
        for name in ("msp", "knn")
    }
    best, shares = pick_detector(fitted, val, pool)
    assert best == "knn"
    assert shares["knn"] == pytest.approx(0.525, abs=0.04)
    assert shares["msp"] == pytest.approx(0.05, abs=0.04)
    # the share is each detector's own threshold applied to the pool
    for name, det in fitted.items():
        assert shares[name] == det.predict_unknown(pool["features"], pool["logits"]).float().mean()
