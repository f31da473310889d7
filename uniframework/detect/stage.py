"""The `detect` stage: open-world object detection, ORE vs a plain Faster R-CNN, task by task.

For each task t of the protocol (`tasks.py`):
1. train on task t's image chunk with only task t's classes annotated (ORE: + auto-labelled
   unknowns, + contrastive clustering from `contrastive_start` of the task's steps on);
2. from task 2 on, fine-tune on class-balanced exemplar images (herding, `ore.py`), annotated
   with every class seen so far (both methods, as ORE's "Faster R-CNN + Finetuning" baseline);
3. ORE: fit the energy Weibulls on the held-out images;
4. evaluate on the test images: known mAP@50 (previous / current / all), U-Recall@50, WI,
   A-OSE (`metrics.py`).

ORE's defaults are OWOD's where they carry over (raw RoI features with margin 10, queue 20,
momentum 0.99); the prototype update interval keeps OWOD's ratio to the training length (1/6)
rather than its 3,000 iterations, and auto-labelling stays below IoU 0.3 (OWOD's 0.5 measured
worse here). The reasons, and the options that give the other behaviour, are in `ore.py`.

Writes `checkpoints/detect.safetensors` (final model + what rebuilds it), `detect/weibull.json`,
per-task checkpoints for resume (`checkpoints/detect/task<t>.safetensors` + `detect/task<t>.json`;
mid-task, `checkpoints/detect/task<t>[_finetune]/last.ckpt` after every epoch, removed when the
task is done: a run killed anywhere resumes where it stopped and ends as an uninterrupted one),
`detect/detections.png` and `detect/owod_metrics.png`. Metrics: `task<t>.<metric>` per task
(`map50_all`, `map50_prev` from task 2 on, `map50_cur`, `u_recall50`, `wi`, `a_ose`) and the
last task's unprefixed (`map50_all` as `map50`). The loops (`engine.py`) are plain PyTorch on
one device (`trainer.accelerator`): the state outside the weights (feature store, Weibulls) is
not DDP-synchronised.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from ..io import load_weights, read_json, save_weights, write_json
from ..openset.weibull import EnergyWeibullScorer
from ..registry import STAGES
from ..supervised.prototypes import hinge_margin
from .datasets import DetectionSet, load_coco, load_voc
from .engine import (
    detect_all,
    device_for,
    exemplar_set,
    heldout_logits,
    pseudo_label_previous,
    train_detector,
)
from .metrics import owod_metrics
from .model import OpenWorldDetector
from .options import DetectOptions
from .ore import ContrastiveClustering, fit_identifier
from .scenes import digit_scenes
from .tasks import TaskProtocol, build_protocol, split_images

log = logging.getLogger(__name__)


def model_kwargs(opts: DetectOptions, num_classes: int) -> dict:
    """Everything `OpenWorldDetector` needs to be rebuilt (stored in the weights' metadata)."""
    return dict(
        num_classes=num_classes,
        unknown=opts.method == "ore",
        backbone=opts.backbone,
        image_size=opts.image_size,
        fpn_levels=list(opts.fpn_levels),
        fpn_channels=opts.fpn_channels,
        anchor_sizes=list(opts.anchor_sizes),
        representation=opts.representation,
        rpn_pre_nms=opts.rpn_pre_nms,
        rpn_post_nms=opts.rpn_post_nms,
        roi_batch=opts.roi_batch,
        detections_per_img=opts.detections_per_img,
        score_thresh=opts.score_thresh,
        unknown_topk=opts.unknown_topk,
        unknown_iou=opts.unknown_iou,
    )


def load_data(opts: DetectOptions, seed: int) -> tuple[DetectionSet, DetectionSet]:
    """(train, test) detection sets of `opts.dataset`."""
    if opts.dataset == "digit_scenes":
        kw = dict(image_size=opts.image_size, objects=opts.objects, digit_size=opts.digit_size)
        return (
            digit_scenes(opts.num_train, "train", seed=seed, **kw),
            digit_scenes(opts.num_test, "test", seed=seed, **kw),
        )
    if opts.root is None:
        raise UserError(f"detect dataset '{opts.dataset}' needs `root`: the dataset folder")
    loader = load_voc if opts.dataset == "voc" else load_coco
    train = loader(opts.root, opts.train_split, opts.classes)
    return train, loader(opts.root, opts.test_split, train.classes)


def task_data(
    opts: DetectOptions, seed: int
) -> tuple[TaskProtocol, DetectionSet, DetectionSet, DetectionSet, list]:
    """(protocol, train, held-out val, test, per-task chunks of train's indices): the stage's
    split of the data, the same for every run of `opts` and `seed`."""
    train_all, test = load_data(opts, seed)
    protocol = build_protocol(
        train_all.classes, opts.tasks, opts.task_sizes, opts.class_order, seed
    )
    n_val = max(2, int(round(opts.val_fraction * len(train_all))))
    perm = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed))
    val, train = (
        train_all.subset(perm[:n_val].sort().values),
        train_all.subset(perm[n_val:].sort().values),
    )
    return protocol, train, val, test, split_images(len(train), len(protocol.tasks), seed)


def to_model_space(data: DetectionSet, order: list[int]) -> DetectionSet:
    """Dataset labels -> model labels (1 + position in the protocol order); objects of classes
    outside `order` must have been removed before."""
    lut = torch.zeros(len(data.classes), dtype=torch.long)
    lut[torch.tensor(order)] = torch.arange(1, len(order) + 1)
    targets = [{"boxes": t["boxes"], "labels": lut[t["labels"]]} for t in data.targets]
    return DetectionSet(data.images, targets, data.classes, data.names)


def _task_files(run_dir: Path, t: int) -> tuple[Path, Path]:
    return (
        run_dir / "checkpoints" / "detect" / f"task{t + 1}.safetensors",
        run_dir / "detect" / f"task{t + 1}.json",
    )


def _loop_checkpoints(run_dir: Path, t: int) -> tuple[Path, Path]:
    """Task t's per-epoch checkpoints: its training, its exemplar fine-tune."""
    folder = run_dir / "checkpoints" / "detect"
    return folder / f"task{t + 1}" / "last.ckpt", folder / f"task{t + 1}_finetune" / "last.ckpt"


@STAGES.register("detect")
class DetectStage:
    """Open-world detection: ORE (or a plain Faster R-CNN) over the task protocol."""

    Options = DetectOptions

    @staticmethod
    def run(ctx, opts: DetectOptions) -> dict[str, float]:
        cfg, run_dir = ctx.cfg, Path(ctx.run_dir)
        device = device_for(cfg.trainer.accelerator)
        epochs = opts.max_epochs or cfg.trainer.max_epochs
        torch.manual_seed(cfg.seed)
        protocol, train, val, test, chunks = task_data(opts, cfg.seed)
        names, order = train.classes, protocol.order
        ore = opts.method == "ore"
        model = OpenWorldDetector(**model_kwargs(opts, len(order)))
        clustering = None
        if ore:
            clustering = ContrastiveClustering(
                len(order) + 1,  # known classes + unknown
                opts.representation,
                opts.store_size,
                opts.prototype_momentum,
                hinge_margin(opts.contrastive_margin, opts.contrastive_features),
                opts.prototype_every,
                opts.prototype_every_fraction,
                normalise=opts.contrastive_features == "normalised",
            )
        log.info(
            "detect: %s on %s, %d train / %d held-out / %d test images, tasks %s (unknown "
            "throughout: %s), %d epochs per task on %s",
            opts.method, opts.dataset, len(train), len(val), len(test),
            [[names[c] for c in task] for task in protocol.tasks],
            [names[c] for c in protocol.unknown(len(protocol.tasks) - 1)],
            epochs, device,
        )  # fmt: skip
        metrics: dict[str, float] = {}
        per_task: list[dict[str, float]] = []
        scorer = None
        for t, classes in enumerate(protocol.tasks):
            model.num_seen = len(protocol.seen(t))
            weights, record = _task_files(run_dir, t)
            if weights.is_file() and record.is_file():  # finished before a cut-off: resume
                state, _ = load_weights(weights)
                _load_state(model, clustering, state)
                saved = read_json(record)
                scorer = _scorer(saved.get("weibull"))
                result = saved["metrics"]
                log.info("detect: task %d finished earlier, loaded from %s", t + 1, weights)
            else:
                scorer, result = _run_task(
                    ctx, opts, protocol, t, model, clustering, train, val, test, chunks,
                    epochs, device,
                )  # fmt: skip
                state = {f"model.{k}": v for k, v in model.state_dict().items()}
                if clustering is not None:
                    state.update({f"clustering.{k}": v for k, v in clustering.state_dict().items()})
                save_weights(weights, state, {"stage": "detect", "task": t + 1})
                write_json(
                    record,
                    {"metrics": result, "weibull": scorer.state_dict() if scorer else None},
                )
                for loop in _loop_checkpoints(run_dir, t):  # the task record supersedes them
                    shutil.rmtree(loop.parent, ignore_errors=True)
            log.info("detect: task %d (%s): %s", t + 1, [names[c] for c in classes], result)
            per_task.append(result)
            metrics.update({f"task{t + 1}.{k}": v for k, v in result.items()})
        last = dict(per_task[-1])
        last["map50"] = last.pop("map50_all")  # the final task's keys carry no prefix
        metrics.update(last)
        meta = {
            "stage": "detect",
            "method": opts.method,
            "model": model_kwargs(opts, len(order)),
            "num_seen": model.num_seen,
            "keep_unknown_detections": opts.keep_unknown_detections,
            "unknown_over_known": opts.unknown_over_known,
            "class_names": [names[c] for c in order],  # model labels 1..C
        }
        save_weights(ctx.weights_path("detect"), model.state_dict(), meta)
        write_json(run_dir / "detect" / "weibull.json", scorer.state_dict() if scorer else None)
        if opts.figures:
            from .figures import plot_detections, plot_owod_metrics

            sample = test.subset(range(min(6, len(test))))
            dets = detect_all(
                model, sample, scorer, order, device, opts.batch_size,
                opts.keep_unknown_detections, opts.unknown_over_known,
            )  # fmt: skip
            never = protocol.unknown(len(protocol.tasks) - 1)
            plot_detections(sample, dets, run_dir / "detect" / "detections.png", 0.3, never)
            plot_owod_metrics(per_task, run_dir / "detect" / "owod_metrics.png")
        return metrics


def _scorer(state: dict | None) -> EnergyWeibullScorer | None:
    return EnergyWeibullScorer.from_state_dict(state) if state else None


def _load_state(model, clustering, state: dict) -> None:
    model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    if clustering is not None:
        saved = {k[11:]: v for k, v in state.items() if k.startswith("clustering.")}
        saved.setdefault("steps", clustering.steps)  # task files from before it was kept
        clustering.load_state_dict(saved)
        clustering.ready |= clustering.store.count > 0


def _run_task(
    ctx,
    opts,
    protocol: TaskProtocol,
    t,
    model,
    clustering,
    train,
    val,
    test,
    chunks,
    epochs,
    device,
):
    """Train, fine-tune, calibrate and evaluate task t; returns (scorer, metrics)."""
    seed = ctx.cfg.seed + t
    # the task's random draws (RoI sampling) start from its own seed: a rerun that loads the
    # earlier tasks from their files, without drawing their numbers, trains this one the same
    torch.manual_seed(seed)
    order, seen = protocol.order, protocol.seen(t)
    loop, finetune_loop = _loop_checkpoints(Path(ctx.run_dir), t)
    task_data = to_model_space(train.subset(chunks[t]).with_labels(protocol.tasks[t]), order)
    if t > 0 and opts.pseudo_label_score is not None:
        task_data, added = pseudo_label_previous(
            model, task_data, len(protocol.previous(t)), opts.pseudo_label_score, device,
            opts.batch_size,
        )  # fmt: skip
        log.info("detect task %d: %d boxes of earlier classes pseudo-labelled", t + 1, added)
    train_detector(
        model, clustering, task_data, epochs, opts.lr, opts, device, seed, f"task {t + 1}", loop
    )
    if t > 0 and opts.exemplar_finetune:
        seen_idx = sorted(int(i) for c in chunks[: t + 1] for i in c)
        pool = to_model_space(train.subset(seen_idx).with_labels(seen), order)
        chosen = exemplar_set(model, pool, opts.exemplars_per_class, device, opts.batch_size)
        log.info(
            "detect task %d: class-balanced fine-tune on %d exemplar images", t + 1, len(chosen)
        )
        train_detector(
            model, clustering, pool.subset(chosen), opts.finetune_epochs,
            opts.finetune_lr or opts.lr, opts, device, seed, f"task {t + 1} fine-tune",
            finetune_loop,
        )  # fmt: skip
    scorer = None
    if opts.method == "ore":
        held = to_model_space(val.with_labels(seen), order)
        logits, labels = heldout_logits(model, held, device, opts.batch_size)
        try:
            scorer = fit_identifier(
                logits, labels, len(order), len(seen), opts.temperature,
                opts.degenerate_unknown_fit,
            )  # fmt: skip
        except ValueError as err:  # too few or degenerate energies: no relabelling this task
            log.warning("detect task %d: no energy identifier (%s)", t + 1, err)
    dets = detect_all(
        model, test, scorer, order, device, opts.batch_size, opts.keep_unknown_detections,
        opts.unknown_over_known,
    )  # fmt: skip
    result = owod_metrics(dets, test.targets, seen, protocol.previous(t))
    return scorer, result
