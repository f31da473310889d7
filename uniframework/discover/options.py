"""Options of the `discover` stage (what each one does: the stage's docstring, `stage.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..config import Section

TRAINED = ("openmix", "sinkhorn")  # the methods that train a head over known + new classes


class DiscoverOptions(Section):
    """Options of the `discover` stage."""

    method: Literal["openmix", "kmeans", "sinkhorn", "sskmeans", "gcd"] = "openmix"
    pool: Literal["novel", "detected", "all"] = "novel"
    num_novel: int | Literal["auto"] | None = None  # None = the split's true count
    # `detected` pool, openmix / sinkhorn: after training, every other unlabelled image whose best
    # output over the known and new classes is a new one, by more than the margin that keeps 95%
    # of the held-out knowns, joins that group, so the detector's misses can still reach one
    join_pool: bool = False
    # join_pool: rounds of joining; before each round after the first, the groups train again
    # (max_epochs) on the widened pool, so a head trained on more photos claims more
    join_rounds: int = Field(1, ge=1)
    # join_pool: the share of the held-out knowns the join margin keeps with the known classes
    # (the detector's operating point; a margin below 0 is the plain argmax)
    join_keep: float = Field(0.95, ge=0, le=1)
    # how `auto` counts the novel classes; `silhouette` = `clustering.estimate_by_silhouette`
    estimator: Literal["gcd", "dtc", "silhouette"] = "gcd"
    # gcd / silhouette: the largest count within this of the best score (None: 0.01 / 0.02)
    estimate_tolerance: float | None = Field(None, ge=0)
    max_novel: int = Field(10, ge=1)  # largest count tried by `auto`
    estimate_on: Literal["supervised", "overclustered", "heads"] = "supervised"
    estimate_epochs: int = Field(15, ge=1)  # overclustered / heads: epochs with max_novel outputs
    max_epochs: int | None = Field(None, ge=1)  # None = trainer.max_epochs
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    mix_alpha: float = Field(1.0, gt=0)  # mixing coefficient lam ~ Beta(alpha, alpha)
    anchor_threshold: float = Field(0.9, gt=0, le=1)  # OpenMix: confidence of reliable anchors
    # OpenMix anchors: `network` (paper: the head's softmax) or `sinkhorn` (the balanced
    # pseudo-label; the default, measured better from a k-means start: openmix.py)
    anchor_from: Literal["network", "sinkhorn"] = "sinkhorn"
    anchor_weight: float = Field(1.0, ge=0)
    mix_weight: float = Field(1.0, ge=0)  # OpenMix: labelled x unlabelled mixtures
    sinkhorn_epsilon: float = Field(0.05, gt=0)
    # openmix / sinkhorn: UNO's over-clustering head with overcluster x n outputs (0 = none)
    overcluster: int = Field(0, ge=0)
    gcd_sup_weight: float = Field(0.35, ge=0, le=1)  # GCD: (1 - lam) InfoNCE + lam SupCon
    gcd_temperature: float = Field(1.0, gt=0)  # GCD: InfoNCE temperature (official code)
    gcd_sup_temperature: float = Field(0.07, gt=0)  # GCD: SupCon temperature
    gcd_proj_dim: int = Field(256, ge=1)  # GCD: projection output (official 65536)
    gcd_hidden_dim: int = Field(512, ge=1)  # GCD: projection MLP width (official 2048)
    figures: bool = True

    @model_validator(mode="after")
    def _count_run_fits_method(self) -> DiscoverOptions:
        """Refused here, before any stage runs: the counting run trains the novel head."""
        if self.estimate_on != "supervised" and self.method not in TRAINED:
            raise ValueError(
                f"estimate_on = {self.estimate_on} trains the novel head first: use method "
                "openmix or sinkhorn, or estimate_on: supervised"
            )
        if self.estimate_on == "heads" and self.max_novel < 2:
            raise ValueError(
                "estimate_on = heads compares counts from 2 to max_novel: set max_novel to 2 "
                f"or more (it is {self.max_novel})"
            )
        # (a saved config.yaml holds every key at its default: only a changed one is refused)
        defaults = {k: type(self).model_fields[k].default for k in ("join_keep", "join_rounds")}
        moved = [k for k, v in defaults.items() if getattr(self, k) != v]
        if moved and not self.join_pool:
            raise ValueError(
                f"{', '.join(moved)} only act with join_pool: set join_pool: true, or leave "
                "them at their defaults"
            )
        if self.join_pool and self.method not in TRAINED:
            raise ValueError(
                f"join_pool widens the pool by a trained head's read-out, but method = "
                f"{self.method}: use method openmix or sinkhorn, or join_pool: false"
            )
        return self
