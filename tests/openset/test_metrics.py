"""Open-set metrics against hand-computed values (ties included)."""

import numpy as np
import pytest
import torch

from uniframework.openset.metrics import (
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_95_tpr,
    fpr_at_95_tpr_in,
    openset_metrics,
    operating_point,
    oscr,
)


def test_auroc_hand():
    # unknown 0.35 beats known 0.1, loses to 0.4; unknown 0.8 beats both -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    assert auroc([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    # pairs (unknown, known): (0.5,0.2)=1, (0.5,0.5)=0.5, (0.9,*)=2 -> 3.5/4
    assert auroc(torch.tensor([0.2, 0.5, 0.5, 0.9]), torch.tensor([0, 0, 1, 1])) == 0.875


def test_fpr95_hand():
    unknown = np.arange(1.0, 21.0)  # 20 unknowns; catching 19 needs threshold 2
    known = np.array([0.5, 1.5, 2.5, 10.5, 30.0])  # 2.5, 10.5, 30 are >= 2 -> 3/5
    s = np.r_[known, unknown]
    u = np.r_[np.zeros(5), np.ones(20)].astype(bool)
    assert fpr_at_95_tpr(s, u) == pytest.approx(0.6)


def test_fpr95_tie_at_threshold_counts():
    unknown = np.arange(1.0, 21.0)
    known = np.array([2.0, 30.0, 0.0])  # the known tied at 2.0 is flagged with the unknowns
    u = np.r_[np.zeros(3), np.ones(20)].astype(bool)
    assert fpr_at_95_tpr(np.r_[known, unknown], u) == pytest.approx(2 / 3)


def test_fpr95_both_conventions_hand():
    # knowns 0.1 0.2 0.3 0.7, unknowns 0.05 0.4 0.8 0.9 (higher = more unknown); with 4 of each,
    # "at least 95%" means all 4 (3/4 < 0.95).
    s = [0.1, 0.2, 0.3, 0.7, 0.05, 0.4, 0.8, 0.9]
    u = [0, 0, 0, 0, 1, 1, 1, 1]
    # fpr95 (OpenOOD, unknowns positive): catching all 4 unknowns needs score >= 0.05 flagged,
    # which flags every known too -> 4/4
    assert fpr_at_95_tpr(s, u) == pytest.approx(1.0)
    # fpr95_in (papers, knowns positive): keeping all 4 knowns needs score <= 0.7 accepted,
    # which accepts the unknowns 0.05 and 0.4 -> 2/4
    assert fpr_at_95_tpr_in(s, u) == pytest.approx(0.5)
    # both at 75%: fpr95 flags >= 0.4 (unknowns 0.4 0.8 0.9) -> known 0.7 -> 1/4; fpr95_in
    # accepts <= 0.3 (knowns 0.1 0.2 0.3) -> unknown 0.05 -> 1/4
    assert fpr_at_95_tpr(s, u, tpr=0.75) == fpr_at_95_tpr_in(s, u, tpr=0.75) == 0.25


def test_fpr95_in_tie_at_threshold_counts():
    # 20 knowns 1..20: keeping 19 needs score <= 19 accepted; the unknown tied at 19 is
    # accepted with them, 0.5 too, 25 not -> 2/3 (no interpolation between thresholds)
    known = np.arange(1.0, 21.0)
    unknown = np.array([19.0, 25.0, 0.5])
    u = np.r_[np.zeros(20), np.ones(3)].astype(bool)
    assert fpr_at_95_tpr_in(torch.tensor(np.r_[known, unknown]), torch.tensor(u)) == 2 / 3


def test_aupr_hand():
    s = [0.1, 0.2, 0.3, 0.4, 0.9]
    u = [0, 1, 0, 0, 1]
    # out: 0.9 (R=1/2, P=1), 0.2 (R=1, P=2/4) -> 0.5 + 0.25
    assert aupr_out(s, u) == pytest.approx(0.75)
    # in (knowns, ascending score): 0.1 (1/3, P=1), 0.3 (2/3, P=2/3), 0.4 (1, P=3/4)
    assert aupr_in(s, u) == pytest.approx(1 / 3 + 2 / 9 + 1 / 4)


def test_oscr_hand():
    # thresholds 0.1 .. 0.5 -> (FPR, CCR): (0,.25) (0,.5) (.5,.5) (.5,.5) (.5,.75) (1,.75)
    area = oscr([True, True, False, True], [0.1, 0.2, 0.3, 0.4], [0.25, 0.5])
    assert area == pytest.approx(0.5 * 0.5 + 0.5 * 0.75)


def test_oscr_tie_is_diagonal_and_equals_auroc_when_all_correct():
    assert oscr([True], [0.5], [0.5]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    sk, su = rng.integers(0, 5, 30).astype(float), rng.integers(2, 8, 20).astype(float)
    u = np.r_[np.zeros(30), np.ones(20)].astype(bool)
    assert oscr(np.ones(30, bool), sk, su) == pytest.approx(auroc(np.r_[sk, su], u))


def test_operating_point_hand():
    kept, caught = operating_point([1, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    assert kept == pytest.approx(0.5) and caught == pytest.approx(2 / 3)


def test_openset_metrics_dict_and_errors():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    u = np.array([0, 0, 1, 1], bool)
    m = openset_metrics(s, u, known_correct=[1, 0, 1, 1], pred_unknown=s > 0.3)
    assert set(m) == {
        "auroc",
        "fpr95",
        "fpr95_in",
        "aupr_in",
        "aupr_out",
        "oscr",
        "known_kept",
        "unknown_caught",
    }
    assert m["auroc"] == pytest.approx(0.75)
    # knowns 0.1 0.4, unknowns 0.35 0.8: fpr95 flags >= 0.35 -> known 0.4 -> 1/2; fpr95_in
    # accepts <= 0.4 -> unknown 0.35 -> 1/2
    assert (m["fpr95"], m["fpr95_in"]) == (0.5, 0.5)
    # oscr on knowns only: known 0.1 correct, 0.4 wrong; unknowns 0.35, 0.8
    assert m["oscr"] == pytest.approx(oscr([True, False], [0.1, 0.4], [0.35, 0.8]))
    assert (m["known_kept"], m["unknown_caught"]) == (0.5, 1.0)
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [0, 0])
