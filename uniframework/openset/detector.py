"""The saved unknown detector: one fitted scorer and its decision rule.

Written by the `openset` stage, read by `discover` (`pool: detected`), `predict` and `export`:
- `openset/detector.json`: name, number of known classes, threshold, the scorer's numbers, the
  classifier it reads (`classifier`: "supervised");
- `openset/detector.safetensors`: the scorer's tensors, when it has any (Mahalanobis class means
  and whitening matrix, the KNN feature bank).
The `incremental` stage fits the same kind again on its final classifier, over every class it
learned (ORE refits its unknown identifier after each task): `incremental/detector/`, same files,
`classifier`: "incremental". `predict` and `export` read that one when it exists
(`run_detector`), else the open-set one.

Decision rule. Energy + Weibull decides by its own Weibull fits (ORE). Every other scorer calls a
sample unknown when its score is above the `KEEP_KNOWN` (0.95) quantile of its scores on held-out
known images: 95% of knowns are kept, the operating point at which the out-of-distribution
literature reports FPR@95. No novel label is used to set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..io import load_weights, read_json, save_weights, write_json
from .scores import SCORERS, Scorer

KEEP_KNOWN = 0.95
OPENSET_DIR = Path("openset")
REFIT_DIR = Path("incremental") / "detector"  # fitted on the final (incremental) classifier


def known_threshold(known_scores: Tensor, keep: float = KEEP_KNOWN) -> float:
    """The score at or below which a `keep` fraction of the known samples `[N]` fall."""
    return float(torch.quantile(known_scores.double(), keep))


@dataclass
class Detector:
    """A fitted scorer over the first `num_known` logits of the stage `classifier`'s model;
    `threshold` None = the scorer decides itself (`predict_unknown`, energy + Weibull)."""

    name: str
    scorer: Scorer
    num_known: int
    threshold: float | None
    classifier: str = "supervised"  # the stage whose classifier gives the features / logits

    @classmethod
    def fit(
        cls,
        name: str,
        scorer: Scorer,
        num_known: int,
        val_features: Tensor,
        val_logits: Tensor,
        classifier: str = "supervised",
    ) -> Detector:
        """`scorer` already fitted; the threshold comes from held-out *known* images."""
        if hasattr(scorer, "predict_unknown"):
            return cls(name, scorer, num_known, None, classifier)
        known = scorer.score(val_features, val_logits[:, :num_known])
        return cls(name, scorer, num_known, known_threshold(known), classifier)

    def score(self, features: Tensor | None, logits: Tensor) -> Tensor:
        """`[N]`, higher = more unknown."""
        return self.scorer.score(features, logits[:, : self.num_known])

    def decide(self, features: Tensor | None, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(scores `[N]`, is-unknown `[N]` bool), the score computed once."""
        s = self.score(features, logits)
        if self.threshold is None:
            return s, self.scorer.predict_unknown(logits[:, : self.num_known])
        return s, s > self.threshold

    def predict_unknown(self, features: Tensor | None, logits: Tensor) -> Tensor:
        """`[N]` bool."""
        return self.decide(features, logits)[1]

    def save(self, folder: Path) -> None:
        state = self.scorer.state_dict()
        tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        if tensors:  # written first: the json names them, so it never points at a missing file
            save_weights(folder / "detector.safetensors", tensors, {"detector": self.name})
        write_json(
            folder / "detector.json",
            {
                "name": self.name,
                "num_known": self.num_known,
                "classifier": self.classifier,
                "threshold": self.threshold,
                "keep_known": KEEP_KNOWN if self.threshold is not None else None,
                "state": {k: v for k, v in state.items() if k not in tensors},
                "tensors": sorted(tensors),
                "available": sorted(SCORERS),
            },
        )

    @classmethod
    def load(cls, folder: Path) -> Detector | None:
        """The saved detector, None when the run has none; UserError for an unusable one."""
        info = read_json(folder / "detector.json")
        if info is None:
            return None
        if "num_known" not in info or info.get("name") not in SCORERS:
            raise UserError(
                f"'{folder / 'detector.json'}' is not a detector this version can read (written "
                "by an older version, or edited): rerun the open-set stage with "
                "--restart-from openset"
            )
        state = dict(info["state"])
        if info["tensors"]:
            tensors, _ = load_weights(folder / "detector.safetensors")
            missing = set(info["tensors"]) - set(tensors)
            if missing:
                raise UserError(
                    f"'{folder / 'detector.safetensors'}' lacks {sorted(missing)}: rerun the "
                    "open-set stage with --restart-from openset"
                )
            state.update(tensors)
        scorer = SCORERS[info["name"]].from_state_dict(state)
        classifier = info.get("classifier", "supervised")  # a file without it: the open-set one
        return cls(info["name"], scorer, int(info["num_known"]), info["threshold"], classifier)


def run_detector(run_dir: Path) -> tuple[Detector | None, Path]:
    """The detector `predict` and `export` use, and its folder: the one refitted on the final
    classifier (`incremental/detector/`) when the run has it, else the open-set stage's (None
    when there is neither)."""
    for sub in (REFIT_DIR, OPENSET_DIR):
        detector = Detector.load(Path(run_dir) / sub)
        if detector is not None:
            return detector, Path(run_dir) / sub
    return None, Path(run_dir) / OPENSET_DIR
