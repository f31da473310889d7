"""ORE's options (Joseph et al., CVPR 2021), one model for the two stages that use ORE: the
`supervised` stage (classification) and the `detect` stage (detection) inherit them.

Contrastive clustering (§4.1, `prototypes.py`): a feature store of `store_size` per class, class
prototypes updated by momentum, a hinge loss with margin 10 on raw features (OWOD's defaults).
Auto-labelling (§4.2): the `unknown_topk` least known samples per batch (classification) or
per image (detection) are trained as "unknown".
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import Section
from .prototypes import UPDATE_FRACTION, hinge_margin


class OreOptions(Section):
    """ORE's contrastive clustering and auto-labelling options, shared by supervised and detect."""

    contrastive_weight: float = Field(0.1, ge=0)
    # raw features (paper) or L2-normalised features and prototypes in the hinge loss (for ViTs)
    contrastive_features: Literal["raw", "normalised"] = "raw"
    contrastive_margin: float | None = Field(None, gt=0)  # None: raw 10 (paper), normalised 1.0
    store_size: int = Field(20, ge=1)  # features kept per class (paper: 20)
    prototype_momentum: float = Field(0.99, ge=0, le=1)  # paper: 0.99
    # steps between prototype updates; None = `prototype_every_fraction` of each training run
    prototype_every: int | None = Field(None, ge=1)
    prototype_every_fraction: float = Field(UPDATE_FRACTION, gt=0, le=1)  # OWOD: 3000 / 18000
    # auto-labelled unknowns per batch (supervised) or per image (detect); OWOD: 1
    unknown_topk: int = Field(1, ge=1)

    @property
    def margin(self) -> float:
        """The contrastive hinge margin in use (`contrastive_margin` or the space's default)."""
        return hinge_margin(self.contrastive_margin, self.contrastive_features)

    @model_validator(mode="after")
    def _margin_fits_space(self):
        hinge_margin(self.contrastive_margin, self.contrastive_features)  # raises if unmeetable
        return self
