"""Open-set metrics, defined once. Scores follow the package convention: higher = more unknown.

Inputs are ``[N]`` arrays or tensors: ``scores`` (float) and ``is_unknown`` (bool, the positive
class of the detection task). ROC/PR quantities are sklearn's (``roc_auc_score``, ``roc_curve``,
``average_precision_score``); tied scores are one threshold, so ties count half in AUROC.
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
    """FPR@95%TPR, the usual OOD convention with **unknowns as positives**: the fraction of
    knowns flagged unknown (FPR) at the first ROC threshold that catches >= 95% of the unknowns
    (TPR). No interpolation; tied scores move together, as in sklearn's ``roc_curve``.
    """
    s, u = _check(scores, is_unknown)
    fpr, tprs, _ = roc_curve(u, s, drop_intermediate=False)
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
        "aupr_in": aupr_in(s, u),
        "aupr_out": aupr_out(s, u),
    }
    if known_correct is not None:
        out["oscr"] = oscr(_np(known_correct).astype(bool)[~u], s[~u], s[u])
    if pred_unknown is not None:
        out["known_kept"], out["unknown_caught"] = operating_point(pred_unknown, u)
    return out
