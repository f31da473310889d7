"""The `openset` stage: fit unknown detectors on the supervised model and score them.

Fitting data (no novel label is ever used):
- the labelled known train images (clean views): class statistics for Mahalanobis, the KNN bank;
- `knn_pool` also keeps the whole unlabelled pool as a second bank (`scores.PoolKNNScorer`);
- the held-out known images (`val`) and ORE-style *auto-labelled unknowns*: the fraction of the
  unlabelled pool the model judges least known (highest energy) — the Weibull fits of ORE.
Evaluation: test images of the known classes (known) against those of the novel ones (unknown).

Every scorer gets a decision (`openset.<scorer>.known_kept|unknown_caught`): energy + Weibull by
its fits, the others at the threshold that keeps 95% of the held-out knowns (`detector.py`).
Writes `openset/detector.json` (+ `.safetensors`: the chosen detector, for `predict` and
`discover`), `openset/energy_hist.png` and `openset/roc.png`; metrics
`openset.<scorer>.<metric>` and `openset.auroc` etc. for the chosen detector. FPR@95 in both
conventions (`metrics.py`): `fpr95` (OpenOOD v1.5: knowns flagged when 95% of unknowns are
caught) and `fpr95_in` (the scorers' papers: unknowns accepted when 95% of knowns are kept).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..config import Section
from ..errors import UserError
from ..registry import STAGES
from ..training import extract
from .detector import Detector, known_threshold
from .metrics import openset_metrics
from .scores import energy_score, make_scorer
from .weibull import EnergyWeibullScorer, fit_weibull

log = logging.getLogger(__name__)

PARTS = ("labelled", "val", "unlabelled", "test")
ScorerName = Literal[
    "msp", "maxlogit", "energy", "energy_weibull", "mahalanobis", "knn", "knn_pool"
]


class OpensetOptions(Section):
    """Options of the `openset` stage."""

    scorers: list[ScorerName] = Field(
        default_factory=lambda: [
            "msp",
            "maxlogit",
            "energy",
            "energy_weibull",
            "mahalanobis",
            "knn",
            "knn_pool",
        ]
    )
    # saved for predict / discover; `auto` = the scorer that flags the largest share of the
    # unlabelled pool at the threshold keeping 95% of the held-out knowns (reads no truth)
    detector: ScorerName | Literal["auto"] = "energy_weibull"
    temperature: float = Field(1.5, gt=0)  # energy temperature T (ORE's official value)
    knn_k: int = Field(20, ge=1)
    unknown_fraction: float = Field(0.3, gt=0, le=1)  # of the pool auto-labelled as unknown
    # which pool images are auto-labelled unknown for the Weibull fit: `top_energy` = the
    # `unknown_fraction` of highest energy (right when the pool is all novel); `known_weibull`
    # = those unlikely under a Weibull fitted to the held-out knowns (tail < `unknown_alpha`),
    # which holds on a pool that mixes known and novel images
    auto_label: Literal["top_energy", "known_weibull"] = "top_energy"
    unknown_alpha: float = Field(0.05, gt=0, lt=1)
    figures: bool = True

    @model_validator(mode="after")
    def _detector_is_scored(self) -> OpensetOptions:
        if self.detector != "auto" and self.detector not in self.scorers:
            raise ValueError(f"detector '{self.detector}' must be one of scorers {self.scorers}")
        if not self.scorers:
            raise ValueError("scorers must name at least one scorer")
        return self


def auto_label_unknowns(logits: torch.Tensor, fraction: float, temperature: float) -> torch.Tensor:
    """Indices of the `fraction` of samples with the highest energy score (least known)."""
    k = max(3, int(round(fraction * len(logits))))
    return energy_score(logits, temperature).topk(min(k, len(logits))).indices


def auto_label_unlikely(
    logits: torch.Tensor, known_logits: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Indices of the pool samples [N, k] unlikely to be known: ORE's Weibull fitted to the
    held-out knowns' x = -energy [M, k] (`fit_weibull`), and a sample is taken when its x lies
    in the known fit's lower tail, CDF(x) < alpha (at least the 3 least likely). The rule reads
    only the labelled knowns, so it does not feed on its own picks."""
    known = fit_weibull(-energy_score(known_logits, temperature))
    x = (-energy_score(logits, temperature)).double().numpy()
    logcdf = torch.from_numpy(known.logcdf(x))
    picked = torch.nonzero(logcdf < np.log(alpha)).flatten()
    return picked if len(picked) >= 3 else logcdf.topk(min(3, len(logcdf)), largest=False).indices


def selection_quality(picked: torch.Tensor, is_novel: torch.Tensor) -> dict[str, float]:
    """Auto-labelled unknowns (indices into the pool) against the pool's truth [N] bool:
    `auto_unknown_precision` = share of the picked that are novel, `auto_unknown_recall` =
    share of the pool's novel images that were picked (NaN where undefined)."""
    hit = int(is_novel[picked].sum())
    novel = int(is_novel.sum())
    return {
        "auto_unknown_precision": hit / len(picked) if len(picked) else float("nan"),
        "auto_unknown_recall": hit / novel if novel else float("nan"),
    }


def pool_flags(detector: Detector, val: dict, pool: dict) -> torch.Tensor:
    """Truth-free, [P] bool: the pool images `detector`'s score puts above the threshold that
    keeps 95% of the held-out knowns (`val`), whatever rule the detector decides by."""
    threshold = known_threshold(detector.score(val["features"], val["logits"]))
    return detector.score(pool["features"], pool["logits"]) > threshold


def pick_detector(fitted: dict[str, Detector], val: dict, pool: dict) -> tuple[str, dict]:
    """(`detector: auto`'s choice, {name: the share of the pool `pool_flags` flags}): the
    scorer that flags the most of the pool, the first listed on a tie. No truth is read.

    Why it works: the pool mixes known and new images; if its known ones score as the held-out
    knowns do, about 5% of them pass, so the share is 0.05 + pi (recall - 0.05), pi the pool's
    (unknown) new share. At that operating point the scorer that flags more catches more of
    the new images (checked against the pool's truth and the test AUROC:
    `benchmarks/pick_detector.py`, BENCHMARKS.md "Your own photos"). Two caveats: energy +
    Weibull is compared at this threshold but, once picked, decides by its own fits; and
    `knn_pool` finds each pool image itself among its pool neighbours, which would favour it if
    k were small (at k = 20 the pool's known images pass at 0.049 on cifar10-mini, as the
    held-out ones)."""
    shares = {
        name: float(pool_flags(det, val, pool).float().mean()) for name, det in fitted.items()
    }
    return max(shares, key=shares.__getitem__), shares


def _scorer(name: str, opts: OpensetOptions, num_known: int):
    if name == "energy_weibull":
        return EnergyWeibullScorer(temperature=opts.temperature, num_known=num_known)
    if name == "energy":
        return make_scorer(name, temperature=opts.temperature)
    return make_scorer(name, k=opts.knn_k) if name.startswith("knn") else make_scorer(name)


def fit_detectors(
    opts: OpensetOptions,
    names: list[str],
    train: dict,
    val: dict,
    pool: dict,
    k: int,
    skip_failed: bool = False,
) -> tuple[dict[str, Detector], torch.Tensor]:
    """({name: fitted Detector}, the pool rows auto-labelled unknown) from the outputs
    (`features`, `logits` over the k known classes, `labels`) of the labelled train images, the
    held-out known ones (`val`: thresholds, Weibull fits) and the unlabelled pool (labels
    unread): Mahalanobis / KNN fit the train features, energy + Weibull the held-out knowns
    against the auto-labelled unknowns, `knn_pool` the train features and the whole pool.
    `skip_failed`: a scorer that cannot be fitted on these outputs (e.g. KNN with fewer train
    images than k) is left out with a warning instead of stopping the stage."""
    if opts.auto_label == "top_energy":
        auto = auto_label_unknowns(pool["logits"], opts.unknown_fraction, opts.temperature)
    else:
        auto = auto_label_unlikely(
            pool["logits"], val["logits"], opts.temperature, opts.unknown_alpha
        )
    calib = {
        "features": torch.cat([val["features"], pool["features"][auto]]),
        "logits": torch.cat([val["logits"], pool["logits"][auto]]),
        "labels": torch.cat([val["labels"], torch.full((len(auto),), -1)]),
    }
    banks = {  # knn_pool: the labelled knowns and the whole pool (labels hidden)
        "features": torch.cat([train["features"], pool["features"]]),
        "logits": None,
        "labels": torch.cat([train["labels"], torch.full((len(pool["labels"]),), -1)]),
    }
    fitted = {}
    for name in names:
        scorer = _scorer(name, opts, k)
        fit_on = {"energy_weibull": calib, "knn_pool": banks}.get(name, train)
        try:
            scorer.fit(fit_on["features"], fit_on["logits"], fit_on["labels"])
        except ValueError as err:
            if not skip_failed:
                raise
            log.warning("openset: %s left out (%s)", name, err)
            continue
        fitted[name] = Detector.fit(name, scorer, k, val["features"], val["logits"])
    return fitted, auto


@STAGES.register("openset")
class OpensetStage:
    """Unknown detection: MSP, MaxLogit, Energy, Energy + Weibull (ORE), Mahalanobis, KNN."""

    Options = OpensetOptions

    @staticmethod
    def run(ctx, opts: OpensetOptions) -> dict[str, float]:
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank != 0:  # small, single-process work: rank 0 does it
            return {}
        data = ctx.data
        split = data.split
        if not data.user_mode and not split.novel:
            raise UserError(
                "the openset stage needs novel classes to evaluate against: set data.num_known "
                f"below the {split.num_classes} classes of the dataset"
            )
        model, _ = ctx.load_classifier("supervised")
        k = split.num_known
        outputs = {p: extract(model, data.loader(data.view(p))) for p in PARTS}
        unknown_prob = outputs["test"]["logits"].softmax(1)[:, -1]  # read if num_classes > k
        for o in outputs.values():  # scorers see the known classes' logits only
            o["logits"] = o["logits"][:, :k]
        train, val, pool, test = (outputs[p] for p in PARTS)
        if len(val["labels"]) < 3:
            raise UserError(
                "the openset stage needs held-out known images: set data.val_fraction > 0"
            )
        is_unknown = test["labels"] >= split.num_known
        known_correct = test["logits"].argmax(1) == test["labels"]
        # evaluation needs test images of known and of new classes (a person's test/ folder
        # may have neither); without them only the chosen detector is fitted (every scorer
        # with `auto`, which picks among them)
        evaluable = bool(is_unknown.any()) and bool((~is_unknown).any())
        metrics, scores = {}, {}
        choose = opts.detector == "auto"
        if choose and len(pool["labels"]) == 0:
            raise UserError(
                "stages.openset.detector = auto picks the scorer by how much of the unlabelled "
                "pool it flags, and this split has no unlabelled images: name a detector "
                "(e.g. stages.openset.detector=energy_weibull)"
            )
        scorers = list(opts.scorers) if evaluable or choose else [opts.detector]
        if len(pool["labels"]) == 0 and "knn_pool" in scorers:
            if opts.detector == "knn_pool":
                raise UserError(
                    "stages.openset.detector = knn_pool needs an unlabelled pool, and this "
                    "split has none: choose another detector"
                )
            scorers.remove("knn_pool")  # nothing to compare with
        fitted, auto = fit_detectors(opts, scorers, train, val, pool, k, skip_failed=choose)
        if not fitted:
            raise UserError(
                "stages.openset.detector = auto: no scorer could be fitted (see the warnings): "
                "add labelled images, or name a detector"
            )
        for name, det in fitted.items() if evaluable else ():
            s, pred = det.decide(test["features"], test["logits"])
            m = openset_metrics(s, is_unknown, known_correct, pred)
            metrics.update({f"{name}.{key}": v for key, v in m.items()})
            scores[name] = s
        chosen_name = opts.detector
        if len(pool["labels"]):  # truth-free, per scorer; `auto` picks by it
            best, shares = pick_detector(fitted, val, pool)
            metrics.update({f"{n}.pool_flagged": v for n, v in shares.items()})
            if choose:
                chosen_name = best
                log.info(
                    "openset: detector auto -> %s (share of the pool flagged at 95%% of the "
                    "held-out knowns kept: %s)",
                    best,
                    {n: round(v, 3) for n, v in shares.items()},
                )
        if not evaluable:
            log.info("openset: no test images of both known and new classes: no evaluation")
        elif model.num_classes > k:  # ORE's extra "unknown" output, as one more scorer
            scores["unknown_class"] = unknown_prob
            m = openset_metrics(scores["unknown_class"], is_unknown, known_correct)
            metrics.update({f"unknown_class.{n}": v for n, v in m.items()})
        if evaluable:
            chosen = ("auroc", "fpr95", "fpr95_in", "oscr", "known_kept", "unknown_caught")
            metrics.update({m: metrics[f"{chosen_name}.{m}"] for m in chosen})
        if (~is_unknown).any():
            metrics["known_acc"] = float(known_correct[~is_unknown].float().mean())
        # truth-free: how much of the unlabelled pool the chosen detector calls unknown
        if len(pool["labels"]):
            flagged = fitted[chosen_name].predict_unknown(pool["features"], pool["logits"])
            metrics["pool_flagged_share"] = float(flagged.float().mean())
        metrics["auto_unknowns"] = len(auto)
        truth = data.pool_truth(pool["index"].numpy())
        if truth is not None:  # the selection against the pool's hidden truth (evaluation)
            metrics.update(selection_quality(auto, torch.from_numpy(truth >= k)))
            metrics["auto_unknowns_truly_novel"] = metrics["auto_unknown_precision"]
            metrics.update(data.pool_makeup())
        out = ctx.run_dir / "openset"
        fitted[chosen_name].save(out)
        if opts.figures and evaluable:
            from .figures import energy_histogram, roc_curves

            energy_histogram(
                test["logits"],
                is_unknown,
                fitted["energy_weibull"].scorer if "energy_weibull" in fitted else None,
                opts.temperature,
                out / "energy_hist.png",
            )
            roc_curves(scores, is_unknown, out / "roc.png")
        if evaluable:
            log.info(
                "openset: %s AUROC %.4f (known %d / unknown %d test images)",
                chosen_name,
                metrics["auroc"],
                int((~is_unknown).sum()),
                int(is_unknown.sum()),
            )
        return metrics
