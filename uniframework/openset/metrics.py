"""Open-set metrics, defined once. Scores follow the package convention: higher = more unknown.

Inputs are ``[N]`` arrays or tensors: ``scores`` (float) and ``is_unknown`` (bool). Unknowns are
the positive class unless a metric says otherwise (``aupr_in`` and ``fpr95_in`` take the
knowns). FPR@95 comes in both conventions: ``fpr95`` (OpenOOD v1.5: knowns flagged when 95% of
unknowns are caught) and ``fpr95_in`` (the ODIN / Energy / Mahalanobis / KNN papers: unknowns
accepted when 95% of knowns are kept). ROC/PR quantities are sklearn's (``roc_auc_score``,
``roc_curve``, ``average_precision_score``); tied scores are one threshold, so ties count half
in AUROC and move together in FPR@95.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import auc, average_precision_score, roc_auc_score, roc_curve


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
    return np.asarray(x).ravel()


def _check(scores, is_unknown) -> tuple[np.ndarray, np.ndarray]:
    s, u = _np(scores).astype(np.float64), _np(is_unknown).astype(bool)
    if s.shape != u.shape:
        raise ValueError(f"scores {s.shape} and is_unknown {u.shape} differ in length")
    if u.all() or not u.any():
        raise ValueError("open-set metrics need both known and unknown samples")
    return s, u


def auroc(scores, is_unknown) -> float:
    """Area under the ROC curve with unknowns as positives (0.5 = chance)."""
    s, u = _check(scores, is_unknown)
    return float(roc_auc_score(u, s))


def fpr_at_95_tpr(scores, is_unknown, tpr: float = 0.95) -> float:
    """FPR@95 as OpenOOD v1.5 reports it (metric ``fpr95``), with **unknowns as positives**:
    the fraction of *knowns* flagged unknown (``score >= t``) at the highest threshold ``t``
    that flags at least 95% of the unknowns. Lower is better.

    No interpolation: ``t`` runs over the observed scores, as in sklearn's ``roc_curve``, and
    samples with tied scores are flagged together, so a known tied with the threshold counts.
    Not the papers' FPR@95 (ODIN, Energy, Mahalanobis, KNN): that is :func:`fpr_at_95_tpr_in`.
    """
    s, u = _check(scores, is_unknown)
    fpr, tprs, _ = roc_curve(u, s, drop_intermediate=False)
    return float(fpr[np.argmax(tprs >= tpr - 1e-12)])


def fpr_at_95_tpr_in(scores, is_unknown, tpr: float = 0.95) -> float:
    """FPR@95 with **knowns as positives** (metric ``fpr95_in``), the convention of the ODIN,
    Energy (Liu et al. 2020), Mahalanobis and KNN (Sun et al. 2022) papers: the fraction of
    *unknowns* accepted as known (``score <= t``) at the lowest threshold ``t`` that accepts at
    least 95% of the knowns (TPR of the knowns >= 95%). Lower is better. This is the operating
    point of the saved detectors (``detector.py``: keep 95% of the held-out knowns).

    No interpolation: ``t`` runs over the observed scores (sklearn's ``roc_curve`` on knowns vs.
    negated scores), and samples with tied scores are accepted together, so an unknown tied with
    the threshold counts. With few knowns "at least 95%" can mean all of them (4 knowns: 3/4 <
    0.95). The Energy and KNN reference code (``fpr_and_fdr_at_recall``, from Hendrycks et al.'s
    Outlier Exposure) takes the threshold whose TPR is *nearest* 95% instead, which may differ
    from this by one step of the curve.
    """
    s, u = _check(scores, is_unknown)
    fpr, tprs, _ = roc_curve(~u, -s, drop_intermediate=False)
    return float(fpr[np.argmax(tprs >= tpr - 1e-12)])


def aupr_in(scores, is_unknown) -> float:
    """Average precision with **knowns as positives**, ranked by the negated score."""
    s, u = _check(scores, is_unknown)
    return float(average_precision_score(~u, -s))


def aupr_out(scores, is_unknown) -> float:
    """Average precision with **unknowns as positives**, ranked by the score."""
    s, u = _check(scores, is_unknown)
    return float(average_precision_score(u, s))


def oscr(known_correct, known_scores, unknown_scores) -> float:
    """Open-Set Classification Rate (Dhamija et al., NeurIPS 2018): area under CCR vs FPR.

    A sample is *accepted* as known at threshold ``t`` when ``score <= t``.
    ``CCR(t)`` = fraction of all knowns that are accepted **and** correctly classified;
    ``FPR(t)`` = fraction of unknowns accepted. ``t`` sweeps every distinct score, starting
    from (0, 0); samples with tied scores are accepted together, so a known/unknown tie is a
    diagonal step (half credit), as in AUROC. ``known_correct: [K]`` bool (closed-set argmax is
    right), ``known_scores: [K]``, ``unknown_scores: [U]``. Equals AUROC when all are correct.
    """
    c, sk, su = _np(known_correct).astype(bool), _np(known_scores), _np(unknown_scores)
    if len(c) != len(sk) or len(sk) == 0 or len(su) == 0:
        raise ValueError("oscr needs known_correct and known_scores of one length and unknowns")
    thresholds = np.unique(np.concatenate([sk, su]))  # ascending
    ccr = np.searchsorted(np.sort(sk[c]), thresholds, side="right") / len(sk)
    fpr = np.searchsorted(np.sort(su), thresholds, side="right") / len(su)
    return float(auc(np.r_[0.0, fpr], np.r_[0.0, ccr]))


def operating_point(pred_unknown, is_unknown) -> tuple[float, float]:
    """Hard decisions -> (fraction of knowns kept as known, fraction of unknowns caught)."""
    p, u = _check(pred_unknown, is_unknown)
    p = p.astype(bool)
    return float((~p[~u]).mean()), float(p[u].mean())


def openset_metrics(scores, is_unknown, known_correct=None, pred_unknown=None) -> dict[str, float]:
    """All metrics in one flat dict. ``known_correct: [N]`` (read on knowns only) adds ``oscr``;
    ``pred_unknown: [N]`` bool adds ``known_kept`` and ``unknown_caught``."""
    s, u = _check(scores, is_unknown)
    out = {
        "auroc": auroc(s, u),
        "fpr95": fpr_at_95_tpr(s, u),
        "fpr95_in": fpr_at_95_tpr_in(s, u),
        "aupr_in": aupr_in(s, u),
        "aupr_out": aupr_out(s, u),
    }
    if known_correct is not None:
        out["oscr"] = oscr(_np(known_correct).astype(bool)[~u], s[~u], s[u])
    if pred_unknown is not None:
        out["known_kept"], out["unknown_caught"] = operating_point(pred_unknown, u)
    return out
