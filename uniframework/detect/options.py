"""Options of the `detect` stage, shared by the stage (`stage.py`) and its loops (`engine.py`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..supervised.ore_options import OreOptions
from .ore import UNKNOWN_IOU


class DetectOptions(OreOptions):
    """Options of the `detect` stage (its data options live here: `data` is classification's)."""

    method: Literal["ore", "baseline"] = "ore"

    # data
    dataset: Literal["digit_scenes", "voc", "coco"] = "digit_scenes"
    root: str | None = None  # voc / coco folder
    train_split: str = "trainval"  # voc: ImageSets/Main/<split>.txt; coco: instances_<split>
    test_split: str = "test"
    classes: list[str] | None = None  # voc / coco class list; None = from the annotations
    num_train: int = Field(600, ge=4)  # digit scenes
    num_test: int = Field(200, ge=1)
    objects: tuple[int, int] = (2, 5)  # digits per scene (min, max)
    digit_size: tuple[int, int] = (18, 36)  # digit height in pixels (min, max)
    image_size: int = Field(112, ge=32, le=2048)  # scene side; detector input (min = max size)
    val_fraction: float = Field(0.1, gt=0, lt=1)  # training images held out (Weibull fits)
    # protocol: explicit class names per task, or sizes over the (sorted | random) classes
    tasks: list[list[str]] | None = None
    task_sizes: list[int] = Field(default_factory=lambda: [5, 3])
    class_order: Literal["sorted", "random"] = "sorted"

    # detector
    backbone: str = "resnet_tiny"
    fpn_levels: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])  # timm feature levels
    fpn_channels: int = Field(64, ge=8)
    anchor_sizes: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256])
    representation: int = Field(128, ge=8)  # RoI box-head width (the clustering space)
    rpn_pre_nms: int = Field(300, ge=1)
    rpn_post_nms: int = Field(100, ge=1)
    roi_batch: int = Field(64, ge=2)  # sampled RoIs per image
    detections_per_img: int = Field(50, ge=1)
    score_thresh: float = Field(0.05, ge=0, lt=1)

    # training
    max_epochs: int | None = Field(None, ge=1)  # per task; None = trainer.max_epochs
    batch_size: int = Field(4, ge=1)
    lr: float = Field(3e-3, gt=0)  # AdamW, warm-up + cosine
    weight_decay: float = Field(1e-4, ge=0)
    exemplar_finetune: bool = True  # class-balanced fine-tune from task 2 on
    exemplars_per_class: int = Field(50, ge=1)  # images per class (OWOD: 50)
    finetune_epochs: int = Field(4, ge=1)
    finetune_lr: float | None = Field(None, gt=0)  # None = lr
    # from task 2 on, the earlier classes' objects the previous task's model finds (score >=
    # this) are annotated in the task's images, which annotate only the new classes; None = off
    # (ORE / OWOD: they stay unannotated, background, and auto-labelling picks them as unknown)
    pseudo_label_score: float | None = Field(None, gt=0, lt=1)

    # ORE (ignored by method: baseline); its shared options: supervised/ore_options.py
    contrastive_start: float = Field(0.25, ge=0, le=1)  # fraction of a task's steps
    # "overlaps no GT": IoU below this with every box (OWOD: 0.5, its RoI background threshold)
    unknown_iou: float = Field(UNKNOWN_IOU, gt=0, le=1)
    temperature: float = Field(1.5, gt=0)  # energy T (official code)
    # a degenerate (shape < 1) unknown-energy Weibull: fitted again with the shape held >= 1
    # (ours; measured), or discarded for the known-only rule (the earlier behaviour)
    degenerate_unknown_fit: Literal["shape_ge_1", "known_only"] = "shape_ge_1"
    # the unknown head's detections are kept where the known energy density wins (ours,
    # measured); false = OWOD's rule, which drops them
    keep_unknown_detections: bool = True
    # a known detection that a higher-scoring "unknown" one covers at IoU >= this is dropped
    # (ours, measured: `ore.drop_known_under_unknown`); None = off (ORE / OWOD)
    unknown_over_known: float | None = Field(None, gt=0, le=1)
    figures: bool = True

    @model_validator(mode="after")
    def _pairs_ordered(self) -> DetectOptions:
        for name in ("objects", "digit_size"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"'{name}' must be (min, max) with 1 <= min <= max")
        if self.digit_size[1] >= self.image_size:
            raise ValueError("'digit_size' max must be smaller than 'image_size'")
        return self
