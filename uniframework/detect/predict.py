"""Predictions of a finished `detect` run on image files (for `uniframework predict`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.datasets import read_image
from ..data.images import UNREADABLE
from ..errors import UserError
from ..io import load_matching, load_weights, read_json
from ..openset.weibull import EnergyWeibullScorer
from .model import OpenWorldDetector
from .ore import read_out

log = logging.getLogger(__name__)


def load_detector(
    run_dir: str | Path,
) -> tuple[OpenWorldDetector, dict, EnergyWeibullScorer | None]:
    """The final detector of a run (rebuilt from the weights' metadata), its metadata and its
    energy identifier (None for the baseline)."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / "detect.safetensors"
    if not path.is_file():
        raise UserError(
            f"'{run_dir}' has no finished detect stage ({path} is missing): run a config with "
            "the `detect` stage first, or point at its run directory"
        )
    state, meta = load_weights(path)
    if meta.get("stage") != "detect" or "model" not in meta:
        raise UserError(f"'{path}' was not written by the detect stage; rerun it")
    model = OpenWorldDetector(**meta["model"])
    load_matching(model, state, str(path))
    model.num_seen = int(meta["num_seen"])
    weibull = read_json(run_dir / "detect" / "weibull.json")
    scorer = EnergyWeibullScorer.from_state_dict(weibull) if weibull else None
    return model.eval(), meta, scorer


@torch.no_grad()
def predict_images(
    run_dir: str | Path, paths: Sequence[str | Path], min_score: float = 0.3
) -> list[dict]:
    """Per image: ``{"path", "boxes": [[x1, y1, x2, y2], ...], "labels": [name or "unknown"],
    "scores": [...]}`` for detections scoring at least `min_score`; an unreadable file gives
    ``{"path", "error"}`` and the others are still predicted."""
    model, meta, scorer = load_detector(run_dir)
    names = meta["class_names"]
    num_classes = model.roi_heads.num_classes
    keep_unknown = meta.get("keep_unknown_detections", True)
    over_known = meta.get("unknown_over_known")  # None: off (and in files written before it)
    out = []
    for p in paths:
        try:
            image = read_image(Path(p))
        except UNREADABLE as err:
            log.warning("cannot read %s: %s", p, err)
            out.append({"path": str(p), "error": f"{type(err).__name__}: {err}"})
            continue
        d = read_out(
            model.detect([image])[0], scorer, num_classes, model.num_seen, keep_unknown, over_known
        )
        keep = d["scores"] >= min_score
        labels = [
            "unknown" if int(lab) == num_classes + 1 else names[int(lab) - 1]
            for lab in d["labels"][keep]
        ]
        out.append(
            {
                "path": str(p),
                "boxes": [[round(float(v), 1) for v in b] for b in d["boxes"][keep]],
                "labels": labels,
                "scores": [round(float(s), 4) for s in d["scores"][keep]],
            }
        )
    return out
