"""The unknown detector fitted again on the incremental stage's final classifier.

ORE (Joseph et al., CVPR 2021, §4.3) fits its energy-based unknown identifier again after each
task, over the classes seen so far. Here too: once the new classes are learned the classifier
knows k + n classes, and the open-set stage's detector (the supervised classifier, k classes)
no longer describes the model `predict` and `export` answer with. A detector is fitted on the
final classifier's features / logits, with the open-set stage's options (`stages.openset`):

- its kind is `stages.incremental.detector`: Mahalanobis by default, "openset" for the open-set
  stage's own kind (ORE's energy + Weibull in the demo). Why not the energy by default: after
  learning, the pool's rest holds few or no unknowns to fit ORE's unknown Weibull on (the demo:
  the 3 that the rule keeps at least, a degenerate fit), so only the known-only rule is left, and
  logit scores are blind to inputs far from every class (ReLU networks grow confident far from
  the data, Hein et al., CVPR 2019). Measured on the demo's final classifier
  (`benchmarks/refit_detector.py`, 100 images each): uniform noise flagged by energy, energy +
  Weibull, MSP and MaxLogit 0%, KNN 12%, Mahalanobis 100%; test images of the learned classes
  kept 0.94-0.95 by the energy, 0.975 by Mahalanobis. On real photos (cifar10-mini as a person's
  folders, airbench from scratch) no kind flags noise: that network maps it onto its classes;
- known images (the threshold, ORE's known Weibull fit): the held-out known images (`val`) and a
  held-out share (`HELD_OUT`) of each new class's images. The network trained on every one of
  them (holding images out of its training set would change the incremental stage's figures),
  so the share is held out of the scorer's statistics only;
- class statistics (Mahalanobis' means and covariance, the KNN bank): the labelled known images
  and the rest of each new class's images;
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

from ..errors import UserError
from ..openset.detector import REFIT_DIR, Detector
from ..openset.stage import OpensetOptions, _scorer, auto_label_unknowns, auto_label_unlikely
from ..training import extract
from .tasks import TaskPlan

log = logging.getLogger(__name__)


def openset_options(ctx) -> OpensetOptions | None:
    """The run's `stages.openset` options; None when the config has no openset stage."""
    return next((o for name, o in ctx.cfg.stage_list() if name == "openset"), None)


HELD_OUT = 0.2  # share of each new class's images held out of the detector's statistics


def _held_out(labels: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """`[N]` bool: `share` of the images of each class in `labels` (at least one, never all of
    a class with 2 or more), drawn with `seed`."""
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        take = min(max(1, round(share * len(idx))), len(idx) - 1)
        held[idx[torch.randperm(len(idx), generator=g)[:take]]] = True
    return held


def _rows(out: dict, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: v[keep] for key, v in out.items()}


def _cat(*outs: dict) -> dict[str, torch.Tensor]:
    return {key: torch.cat([o[key] for o in outs]) for key in ("features", "logits", "labels")}


def refit_detector(
    ctx, model, plan: TaskPlan, kind: str = "mahalanobis", device: str = "cpu"
) -> dict[str, float]:
    """Fit a `kind` detector ("openset": `stages.openset.detector`, for `auto` the kind the
    open-set stage picked) on `model` (the final classifier, `plan.num_classes` outputs), save
    it to `incremental/detector/`, return its metrics. Without an openset stage there is no
    detector to refit: nothing is written (and a stale one is removed)."""
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
    # a share of each new class's images is held out of the scorer's statistics, for its
    # threshold (the network trained on them all: its training set, and figures, stay as they are)
    held = _held_out(new["labels"], HELD_OUT, ctx.cfg.seed)
    known = _cat(extract(model, data.loader(data.view("val")), device), _rows(new, held))
    train = _cat(outputs(plan.train_index[0], plan.train_labels[0]), _rows(new, ~held))
    rest_index = np.setdiff1d(data.split.unlabelled, learned)
    name = opts.detector if kind == "openset" else kind
    if name == "auto":  # the kind the openset stage picked
        saved = Detector.load(ctx.run_dir / "openset")
        if saved is None:
            raise UserError(
                f"stages.incremental.detector = openset with stages.openset.detector = auto "
                f"refits the kind the open-set stage picked, and {ctx.run_dir / 'openset'} has "
                "no detector.json: rerun with --restart-from openset"
            )
        name = saved.name
    if name == "knn_pool" and len(rest_index) == 0:
        log.warning("incremental: every pool image was learned; knn_pool refitted as plain knn")
        name = "knn"
    metrics: dict[str, float] = {}
    fit_on = train
    if name in ("energy_weibull", "knn_pool"):  # the two kinds that read the pool's rest
        rest = outputs(rest_index, np.full(len(rest_index), -1))
    if name == "energy_weibull":  # ORE: known energies against auto-labelled unknown ones
        if opts.auto_label == "top_energy":
            auto = auto_label_unknowns(rest["logits"], opts.unknown_fraction, opts.temperature)
        else:
            auto = auto_label_unlikely(
                rest["logits"], known["logits"], opts.temperature, opts.unknown_alpha
            )
        metrics["detector_auto_unknowns"] = len(auto)
        fit_on = {
            "features": torch.cat([known["features"], rest["features"][auto]]),
            "logits": torch.cat([known["logits"], rest["logits"][auto]]),
            "labels": torch.cat([known["labels"], torch.full((len(auto),), -1)]),
        }
    elif name == "knn_pool":
        fit_on = _cat(train, rest)
    scorer = _scorer(name, opts, n)
    scorer.fit(fit_on["features"], fit_on["logits"], fit_on["labels"])
    detector = Detector.fit(name, scorer, n, known["features"], known["logits"], "incremental")
    detector.save(folder)
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
