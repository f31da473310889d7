"""The unknown detector fitted again on the incremental stage's final classifier.

ORE (Joseph et al., CVPR 2021, §4.3) fits its energy-based unknown identifier again after each
task, over the classes seen so far. Here too: once the new classes are learned the classifier
knows k + n classes, and the open-set stage's detector (the supervised classifier, k classes)
no longer describes the model `predict` and `export` answer with. The same kind of detector, with
the same options (`stages.openset`), is fitted on the final classifier's features / logits:
- known images (threshold, known Weibull fit): the held-out known images (`val`) and the new
  classes' *training* images. None of a new class's images is held out, because that would change
  the incremental stage's training set and so its figures; training images sit a little more
  confidently than unseen ones, so the rule is somewhat strict with new-class images;
- class statistics (Mahalanobis, the KNN bank): the model's training images, the labelled known
  ones and the new classes';
- the pool's rest: the unlabelled pool minus the images learned as new classes, i.e. what the run
  never learned. Energy + Weibull auto-labels its unknowns there (`stages.openset.auto_label`,
  as the open-set stage does on the whole pool); `knn_pool` keeps it as its pool bank (plain KNN
  when nothing is left).
Written to `incremental/detector/` (`openset/detector.py`, `classifier: incremental`). Metrics
(evaluation, test labels): `detector_known_kept` = share of the test images of learned classes
not flagged, `detector_unknown_caught` = share of those of classes the run did not learn that
are flagged (where the test set has them); `detector_auto_unknowns` = auto-labelled unknowns.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import torch

from ..openset.detector import REFIT_DIR, Detector
from ..openset.stage import OpensetOptions, _scorer, auto_label_unknowns, auto_label_unlikely
from ..training import extract
from .tasks import TaskPlan

log = logging.getLogger(__name__)


def openset_options(ctx) -> OpensetOptions | None:
    """The run's `stages.openset` options; None when the config has no openset stage."""
    return next((o for name, o in ctx.cfg.stage_list() if name == "openset"), None)


def _cat(*outs: dict) -> dict[str, torch.Tensor]:
    return {key: torch.cat([o[key] for o in outs]) for key in ("features", "logits", "labels")}


def refit_detector(ctx, model, plan: TaskPlan, device: str = "cpu") -> dict[str, float]:
    """Fit `stages.openset.detector` on `model` (the final classifier, `plan.num_classes`
    outputs), save it to `incremental/detector/`, return its metrics. Without an openset stage
    there is no detector to refit: nothing is written (and a stale one is removed)."""
    folder = ctx.run_dir / REFIT_DIR
    shutil.rmtree(folder, ignore_errors=True)
    opts = openset_options(ctx)
    if opts is None:
        log.info("incremental: no openset stage, so no unknown detector to refit")
        return {}
    data, n = ctx.data, plan.num_classes

    def outputs(index, labels, base=None) -> dict[str, torch.Tensor]:
        view = data.subset_view(np.asarray(index), np.asarray(labels), False, base)
        return extract(model, data.loader(view), device)

    learned = np.concatenate(plan.train_index[1:])  # the new classes' training images
    new = outputs(learned, np.concatenate(plan.train_labels[1:]))
    known = _cat(extract(model, data.loader(data.view("val")), device), new)
    train = _cat(outputs(plan.train_index[0], plan.train_labels[0]), new)
    rest_index = np.setdiff1d(data.split.unlabelled, learned)
    rest = outputs(rest_index, np.full(len(rest_index), -1))
    if opts.auto_label == "top_energy":
        auto = auto_label_unknowns(rest["logits"], opts.unknown_fraction, opts.temperature)
    else:
        auto = auto_label_unlikely(
            rest["logits"], known["logits"], opts.temperature, opts.unknown_alpha
        )
    name = opts.detector
    if name == "knn_pool" and len(rest_index) == 0:
        log.warning("incremental: every pool image was learned; knn_pool refitted as plain knn")
        name = "knn"
    fit_on = {
        "energy_weibull": {  # ORE: known energies against auto-labelled unknown ones
            "features": torch.cat([known["features"], rest["features"][auto]]),
            "logits": torch.cat([known["logits"], rest["logits"][auto]]),
            "labels": torch.cat([known["labels"], torch.full((len(auto),), -1)]),
        },
        "knn_pool": _cat(train, rest),
    }.get(name, train)
    scorer = _scorer(name, opts, n)
    scorer.fit(fit_on["features"], fit_on["logits"], fit_on["labels"])
    detector = Detector.fit(name, scorer, n, known["features"], known["logits"], "incremental")
    detector.save(folder)
    metrics: dict[str, float] = {"detector_auto_unknowns": len(auto)}
    if len(plan.test_labels):
        test = outputs(data.split.test, plan.test_labels, data.test)
        flagged = detector.predict_unknown(test["features"], test["logits"])
        seen = torch.as_tensor((plan.test_labels >= 0) & (plan.test_labels < n))
        if seen.any():
            metrics["detector_known_kept"] = 1 - float(flagged[seen].float().mean())
        if (~seen).any():
            metrics["detector_unknown_caught"] = float(flagged[~seen].float().mean())
    log.info("incremental: %s detector refitted on the final classifier (%d classes)", name, n)
    return metrics
