"""Progressive learning (EfficientNetV2, Tan & Le, ICML 2021, §4, Algorithm 1), for any backbone.

Training is split into M stages. Stage i (0 … M-1) trains with image size
`S_i = S_0 + (S_e - S_0) · i / (M - 1)` and each regularisation `φ_i = φ_0 + (φ_e - φ_0) · i/(M-1)`
— small images with weak regularisation first, then larger images with stronger regularisation.
The paper's settings (Table 6, min → max; M = 4 stages):

| model | image size | RandAugment | mixup alpha | dropout |
|---|---|---|---|---|
| V2-S | 128 → 300 | 5 → 15 | 0 → 0 | 0.1 → 0.3 |
| V2-M | 128 → 380 | 5 → 20 | 0 → 0.2 | 0.1 → 0.4 |
| V2-L | 128 → 380 | 5 → 25 | 0 → 0.4 | 0.1 → 0.5 |

Our defaults are the V2-S row with the final size = `data.image_size` and the start size half of
it. Stages are whole epochs (epoch e of E is in stage `e·M // E`; M is capped at E). Validation
and test always use the final size. RandAugment is torchvision's (`v2.RandAugment`, 2 ops).

RandAugment magnitudes (option `randaugment_scale`):
- `tf` (default, the paper's scale): the configured magnitudes are TF levels, where 10 is the end
  of each op's range (TF's `_MAX_LEVEL = 10`, the official EfficientNetV2 `autoaugment.py`).
  torchvision reaches the same end at magnitude 30 of its 31 bins, so level m becomes torchvision
  magnitude 3m (5 -> 15, 10 -> 30). The endpoints are converted before the linear ramp, so V2-S's
  5 -> 15 over 4 stages gives 15, 25, 35, 45 = 3 x the official `np.linspace(5, 15, 4)`.
  Past level 10 (V2-S ends at 15, V2-L at 25) the official code does not clip: rotate, shear and
  translate keep growing linearly (45 degrees at 15). A larger `num_magnitude_bins` would not do
  that — torchvision spreads each op's fixed range over the bins, so `linspace(0, max, 3m+1)[3m]`
  is the max again — so `RandAugmentPastMax` continues those five geometric ops at the same step
  per bin and holds the photometric ops at torchvision's end (their signed factors 1 ± 0.9 turn
  invalid a little further on, and TF's own photometric ops past 10 are no guide: its enhance
  factors grow, posterize weakens, solarize becomes the identity).
- `torchvision` (the earlier behaviour): the magnitudes are torchvision's 0–30 scale as given,
  where 30 is each op's end — the paper's numbers then mean about a third of its strength.

The train transform reads (size, magnitude) from a shared-memory tensor, so a change made by
the callback in the main process reaches DataLoader workers too (`num_workers > 0`, persistent
or not) without rebuilding loaders: PyTorch creates each epoch's iterator after
`on_train_epoch_start`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn as nn
from pydantic import Field, field_validator
from torchvision.transforms import v2

from ..config import Section
from ..data.datasets import ImageSet
from ..data.views import make_transform
from ..errors import UserError

log = logging.getLogger(__name__)


class ProgressiveOptions(Section):
    """`stages.supervised.progressive`: `true` for the defaults, or a mapping of these keys."""

    stages: int = Field(4, ge=2)  # M (paper: 4)
    start_size: int | None = Field(None, ge=4)  # S_0; None = data.image_size // 2 (at least 8)
    randaugment: tuple[int, int] = (5, 15)  # magnitude, start -> end (0 = no RandAugment)
    # the scale of `randaugment`: `tf` = the paper's (10 = each op's end), `torchvision` = 0..30
    randaugment_scale: Literal["tf", "torchvision"] = "tf"
    mixup: tuple[float, float] = (0.0, 0.0)  # mixup alpha, start -> end (0 = no mixup)
    dropout: tuple[float, float] = (0.1, 0.3)  # dropout before the head, start -> end

    @field_validator("randaugment")
    @classmethod
    def _magnitude(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(0 <= m <= 30 for m in v):
            raise ValueError(
                "RandAugment magnitudes must lie in 0..30 (on the `tf` scale 10 is each op's "
                "end, on the `torchvision` scale 30)"
            )
        return v

    @field_validator("mixup", "dropout")
    @classmethod
    def _rates(cls, v: tuple[float, float], info) -> tuple[float, float]:
        top = 1.0 if info.field_name == "dropout" else float("inf")
        if not all(0 <= r < top for r in v):
            raise ValueError(f"{info.field_name} values must be >= 0 (dropout < 1)")
        return v


def parse_progressive(v: Any) -> Any:
    """`progressive: true` = the defaults, `false` / null = off (a pydantic before-validator)."""
    if v is True:
        return {}
    return None if v is False else v


@dataclass(frozen=True)
class StageSettings:
    """What one stage trains with."""

    image_size: int
    randaugment: int  # torchvision magnitude (30 = each op's end; above: RandAugmentPastMax)
    mixup: float  # alpha
    dropout: float


TV_BINS = 31  # torchvision's num_magnitude_bins: magnitudes 0..30, 30 = each op's end
TF_MAX_LEVEL = 10  # TF RandAugment's end of each op's range (autoaugment.py `_MAX_LEVEL`)


def torchvision_magnitude(level: int, scale: str) -> int:
    """A configured RandAugment magnitude -> torchvision's: `tf` level m -> 3m (TF's 10 is
    torchvision's 30), `torchvision` as given."""
    return level * (TV_BINS - 1) // TF_MAX_LEVEL if scale == "tf" else level


def progressive_stage(epoch: int, total_epochs: int, num_stages: int) -> tuple[int, int]:
    """(stage index, number of stages) for an epoch: equal runs of epochs, M capped at E."""
    m = max(1, min(num_stages, total_epochs))
    return min(m - 1, epoch * m // max(1, total_epochs)), m


def stage_settings(
    i: int, num_stages: int, start: StageSettings, end: StageSettings
) -> StageSettings:
    """Algorithm 1: every value linear from `start` (stage 0) to `end` (stage M-1)."""
    t = i / (num_stages - 1) if num_stages > 1 else 1.0

    def lerp(a: float, b: float) -> float:
        return a + (b - a) * t

    return StageSettings(
        image_size=round(lerp(start.image_size, end.image_size)),
        randaugment=round(lerp(start.randaugment, end.randaugment)),
        mixup=lerp(start.mixup, end.mixup),
        dropout=lerp(start.dropout, end.dropout),
    )


def endpoints(opts: ProgressiveOptions, final_size: int) -> tuple[StageSettings, StageSettings]:
    """(first stage, last stage) settings from the options and the final image size."""
    s0 = opts.start_size or min(final_size, max(8, final_size // 2))
    if s0 > final_size:
        raise UserError(
            f"config key 'stages.supervised.progressive.start_size' = {s0} is larger than "
            f"data.image_size = {final_size}: the image size must rise; lower start_size"
        )
    r0, r1 = (torchvision_magnitude(r, opts.randaugment_scale) for r in opts.randaugment)
    (m0, m1), (d0, d1) = opts.mixup, opts.dropout
    return StageSettings(s0, r0, m0, d0), StageSettings(final_size, r1, m1, d1)


def progressive_schedule(
    opts: ProgressiveOptions, final_size: int, total_epochs: int
) -> list[StageSettings]:
    """The settings of every epoch, 0 … total_epochs - 1."""
    start, end = endpoints(opts, final_size)
    out = []
    for epoch in range(total_epochs):
        i, m = progressive_stage(epoch, total_epochs, opts.stages)
        out.append(stage_settings(i, m, start, end))
    return out


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., 2018): x [N, ...] mixed with a shuffled copy by λ ~ Beta(α, α).

    Returns (mixed x, the partner labels y[perm], λ); the loss is λ·CE(y) + (1-λ)·CE(y[perm]).
    λ is folded to ≥ 0.5 (same distribution, the pairing is symmetric) so that `y` stays the
    larger share — the label the ORE feature store files a mixed feature under.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x), device=x.device)
    return lam * x + (1.0 - lam) * x[perm], y[perm], lam


def set_dropout(backbone: nn.Module, rate: float) -> bool:
    """Set the dropout before the head: timm's `drop_rate` (EfficientNet, ResNet, ConvNeXt)
    or `head_drop` (ViT). False when the backbone has neither."""
    if isinstance(getattr(backbone, "head_drop", None), nn.Dropout):
        backbone.head_drop.p = rate
        return True
    if isinstance(getattr(backbone, "drop_rate", None), float):
        backbone.drop_rate = rate
        return True
    return False


# torchvision's ops that TF's RandAugment keeps growing linearly past its level 10
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _past_max(magnitudes, linear: bool):
    """One op's `magnitudes(num_bins, h, w)` -> the same values at bins 0..30 and, past 30,
    either the same step per bin (`linear`) or the value at 30."""

    def extended(num_bins: int, height: int, width: int):
        base = magnitudes(TV_BINS, height, width)  # [31] torchvision's own values, or None
        if base is None or num_bins <= TV_BINS:
            return base
        extra = torch.arange(TV_BINS, num_bins)
        if linear:  # every geometric range starts at 0: step = end / 30
            return torch.cat([base, base[-1] / (TV_BINS - 1) * extra])
        return torch.cat([base, base[-1:].expand(len(extra))])

    return extended


class RandAugmentPastMax(v2.RandAugment):
    """torchvision's RandAugment for magnitudes above 30 (TF levels above 10): the geometric ops
    grow on linearly, the photometric ones stay at their end (see the module docstring)."""

    _AUGMENTATION_SPACE = {
        name: (_past_max(fn, name in _GEOMETRIC), signed)
        for name, (fn, signed) in v2.RandAugment._AUGMENTATION_SPACE.items()
    }

    def __init__(self, num_ops: int, magnitude: int) -> None:
        super().__init__(num_ops, magnitude, num_magnitude_bins=max(TV_BINS, magnitude + 1))


def rand_augment(magnitude: int, num_ops: int = 2) -> v2.RandAugment:
    """RandAugment at a torchvision magnitude: torchvision's own up to 30, past it the
    extension."""
    if magnitude < TV_BINS:
        return v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=TV_BINS)
    return RandAugmentPastMax(num_ops, magnitude)


class ProgressiveTransform:
    """The train transform at the current stage's (size, RandAugment magnitude).

    The pair sits in a shared-memory tensor so worker processes see updates; each process keeps
    one composed transform per pair it has met.
    """

    def __init__(self, base: ImageSet, size: int, augment: bool) -> None:
        self.base, self.augment = base, augment
        self.state = torch.tensor([size, 0], dtype=torch.int64).share_memory_()
        self._cache: dict[tuple[int, int], v2.Compose] = {}

    def set(self, size: int, magnitude: int) -> None:
        self.state[0], self.state[1] = size, magnitude

    @property
    def size(self) -> int:
        return int(self.state[0])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        key = (int(self.state[0]), int(self.state[1]))
        if key not in self._cache:
            tf = make_transform(self.base, key[0], train=True, augment=self.augment)
            if key[1] > 0:  # on uint8, after crop/flip, before ToDtype + Normalize
                tf.transforms.insert(-2, rand_augment(key[1]))
            self._cache[key] = tf
        return self._cache[key](image)


class ProgressiveLearning(L.Callback):
    """At each epoch start: the stage's image size + RandAugment on the train transforms, the
    backbone's dropout, and the module's `mixup_alpha`. Stateless: resume recomputes the stage."""

    def __init__(
        self, opts: ProgressiveOptions, final_size: int, transforms: list[ProgressiveTransform]
    ) -> None:
        self.opts, self.final_size, self.transforms = opts, final_size, transforms
        self.start, self.end = endpoints(opts, final_size)  # raises on a bad start size now
        self._warned = False

    def settings(self, epoch: int, total_epochs: int) -> StageSettings:
        i, m = progressive_stage(epoch, total_epochs, self.opts.stages)
        return stage_settings(i, m, self.start, self.end)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = self.settings(trainer.current_epoch, trainer.max_epochs)
        for tf in self.transforms:
            tf.set(s.image_size, s.randaugment)
        if not set_dropout(pl_module.model.backbone, s.dropout) and not self._warned:
            log.warning("progressive: this backbone has no head dropout; dropout is not scheduled")
            self._warned = True
        pl_module.mixup_alpha = s.mixup
        pl_module.log_dict(
            {"progressive_image_size": float(s.image_size), "progressive_dropout": s.dropout},
            on_epoch=True,
            on_step=False,
        )
        log.info("progressive: epoch %d -> %s", trainer.current_epoch, s)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == 0:  # the size the model really gets, x [N, 3, S, S]
            x = (batch["labelled"] if isinstance(batch, dict) else batch)[0]
            pl_module.log("train_image_px", float(x.shape[-1]), on_epoch=True, on_step=False)
