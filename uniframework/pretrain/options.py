"""Options of the `pretrain` stage, shared by the stage, its evaluation and its figures."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..config import Section
from ..errors import did_you_mean
from .module import METHODS


class PretrainOptions(Section):
    """Options of the `pretrain` stage; None = the method's paper default (see `module.py`)."""

    method: str = "mae"  # mae | simmim | ibot (any name in module.METHODS)
    mask_ratio: float | None = Field(None, gt=0, lt=1)  # mae 0.75, simmim 0.6, ibot 0.3 +- 0.2
    mask_patch_size: int | None = Field(None, ge=1)  # simmim; None = 32 px (paper), at most
    # image_size // 4 (8 px at 32 px): `masking.simmim_mask_patch_size`
    min_num_patches: int | None = Field(None, ge=1)  # ibot smallest masked block; None =
    # (min(h, w) // 3) ** 2 patches of the h x w grid (official iBOT: 16 on 14 x 14); BEiT's 4
    decoder_dim: int = Field(128, ge=32, multiple_of=32)  # mae; paper (ViT-B) 512, heads = dim/32
    decoder_depth: int = Field(2, ge=1)  # mae; paper (ViT-B) 8
    norm_pix_loss: bool = True  # mae: per-patch normalised targets (paper default)
    base_lr: float | None = Field(None, gt=0)  # lr = base_lr*batch/256; mae 1.5e-4, simmim 1e-4,
    # ibot 5e-4
    weight_decay: float | None = Field(None, ge=0)  # mae, simmim 0.05; ibot 0.04
    weight_decay_end: float | None = Field(None, ge=0)  # cosine to it; ibot 0.4, others constant
    betas: tuple[float, float] | None = None  # mae (0.9, 0.95), simmim and ibot (0.9, 0.999)
    warmup_epochs: float | None = Field(None, ge=0)  # None = paper share: mae 40/800, others 10/100
    max_epochs: int | None = Field(None, ge=1)  # None = trainer.max_epochs
    crop_scale: tuple[float, float] | None = None  # mae (0.2, 1), simmim (0.67, 1), ibot (0.14, 1)
    clip_grad: float | None = Field(None, ge=0)  # max grad norm; mae off, simmim 5, ibot 3 (each
    # parameter on its own)
    out_dim: int = Field(1024, ge=2)  # ibot head outputs K ([CLS] and patches); paper 8192
    shared_head: bool = True  # ibot: one last layer for [CLS] and patches (official recipes)
    shared_head_teacher: bool = True  # ibot: the teacher shares it even when shared_head is
    # false (official --shared_head_teacher); false = the teacher has its own patch layer too
    local_crops: int = Field(0, ge=0)  # ibot local crops (image_size*96/224 px); paper 10
    teacher_momentum: float = Field(0.996, ge=0, le=1)  # ibot EMA start, cosine to 1 (paper)
    teacher_temp: float = Field(0.07, gt=0)  # ibot, after warm-up from 0.04 (paper)
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    linear_probe_iters: int = Field(100, ge=0)  # L-BFGS iterations (full passes); 0 = no probe
    figures: bool = True

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if name not in METHODS:
            raise ValueError(
                f"unknown method '{name}'{did_you_mean(name, METHODS.names())}; "
                f"choose one of {', '.join(METHODS.names())}"
            )
        return name

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(0 <= b < 1 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1] <= 1:
            raise ValueError("crop_scale must be (low, high) with 0 < low <= high <= 1")
        return v
