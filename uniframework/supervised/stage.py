"""The `supervised` stage: train on the known labelled split, keep the best weights, score them.

Writes `checkpoints/supervised/{last,best}.ckpt` (Lightning, for resume) and
`checkpoints/supervised.safetensors` (the classifier, for every later stage and `predict`);
with `simgcd_weight`, also `checkpoints/supervised_simgcd.safetensors` (SimGCD's prototypes,
which no later stage reads; `benchmarks/simgcd_pool.py` measures them).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader

from ..discover.uno import two_views
from ..errors import UserError
from ..io import save_weights
from ..models import build_classifier
from ..models.backbones import start_weights
from ..openset.stage import selection_quality
from ..registry import STAGES
from ..training import best_state, extract, fit, make_trainer
from .module import SupervisedModule, SupervisedOptions
from .progressive import ProgressiveLearning, ProgressiveTransform
from .unknown_selection import UnknownSelection

log = logging.getLogger(__name__)


@STAGES.register("supervised")
class SupervisedStage:
    """Classifier over the known classes, trained with cross-entropy on Lightning."""

    Options = SupervisedOptions

    @staticmethod
    def run(ctx, opts: SupervisedOptions) -> dict[str, float]:
        data, cfg = ctx.data, ctx.cfg
        k = data.split.num_known
        model_cfg, start = ctx.model_start("supervised")  # hand-off from `pretrain`, resume
        if model_cfg.weights != cfg.model.weights:
            log.info("supervised: backbone starts from %s", model_cfg.weights)
        model = build_classifier(model_cfg, cfg.data.image_size, k + opts.unknown_class, start)
        module = SupervisedModule(model, opts, k, (data.train.mean, data.train.std))
        has_val = len(data.split.val) > 0
        monitor = opts.keep if has_val and opts.keep != "last" else None
        trainer = make_trainer(cfg.trainer, ctx.run_dir, "supervised", opts.max_epochs, monitor)
        if opts.progressive is not None and cfg.data.batched:
            raise UserError(
                "stages.supervised.progressive swaps per-image transforms; it does not combine "
                "with data.batched: drop one of them"
            )
        labelled = data.view("labelled", train=True)
        train_views = [labelled]
        train = data.loader(labelled, train=True, batch_size=opts.batch_size)
        if opts.uses_pool:  # a pool batch beside every labelled batch (labels hidden)
            pool = data.view("unlabelled", train=True, hide_labels=True)
            if len(pool) == 0:
                raise UserError(
                    "stages.supervised.unknown_class / energy_margins / gcd_weight need an "
                    "unlabelled pool: set data.num_known below the class count or "
                    "data.labelled_fraction below 1"
                )
            train_views.append(pool)
            batch = opts.batch_size or data.cfg.batch_size
            pool_batch = opts.pool_batch_size or batch
            if opts.trains_unknowns and opts.auto_label == "known_weibull":
                if not has_val:
                    raise UserError(
                        "stages.supervised.auto_label = known_weibull fits the held-out "
                        "knowns: set data.val_fraction > 0, or use auto_label: topk"
                    )
                trainer.callbacks.append(
                    UnknownSelection(
                        data.loader(data.view("val")),
                        data.loader(data.view("unlabelled", hide_labels=True)),
                        len(data.train),
                        opts,
                        k,
                    )
                )
            if opts.gcd_weight > 0:  # two views of each; an epoch = one pass over the labelled
                # (a pool batch that runs the pool out first would cut the epoch short)
                if opts.pool_batch_size and len(pool) // pool_batch < len(labelled) // batch:
                    raise UserError(
                        f"stages.supervised.pool_batch_size = {pool_batch} makes fewer batches of "
                        f"the {len(pool)} unlabelled images than of the {len(labelled)} labelled "
                        f"ones: set it to {max(1, len(pool) // max(1, len(labelled) // batch))} "
                        "or less"
                    )
                train = CombinedLoader(
                    {
                        "labelled": data.loader(two_views(labelled), True, opts.batch_size),
                        "pool": data.loader(two_views(pool), True, pool_batch),
                    },
                    mode="min_size",
                )
            else:
                train = {
                    "labelled": train,
                    "pool": data.loader(pool, train=True, batch_size=pool_batch),
                }
        if opts.progressive is not None:  # image size + regularisation rise by stage
            trainer.callbacks.append(progressive_callback(opts, cfg.data, train_views))
        val = data.loader(data.view("val")) if has_val else None
        log.info(
            "supervised: %s on %d labelled images of %d known classes -> %s",
            cfg.model.backbone,
            len(data.split.labelled),
            k,
            ctx.run_dir,
        )
        fit(trainer, module, train, val)
        if not trainer.is_global_zero:
            return {}
        best = best_state(trainer)
        if best is not None:
            module.load_state_dict(best)
        start = start_weights(model_cfg)  # this run's own pretrain file: no absolute path, so
        handoff = str(ctx.weights_path("pretrain"))  # the record is the same in any run folder
        start = start.replace(handoff, "this run's checkpoints/pretrain.safetensors")
        ctx.save_model("supervised", model, num_known=k, start_weights=start)
        if hasattr(module, "prototypes"):
            save_weights(
                ctx.run_dir / "checkpoints" / "supervised_prototypes.safetensors",
                {"prototypes": module.prototypes},
                {"num_known": k},
            )
        if hasattr(module, "prototype_head"):  # SimGCD's prototypes, for diagnostics only
            save_weights(
                ctx.run_dir / "checkpoints" / "supervised_simgcd.safetensors",
                {"prototypes": module.prototype_head.weight.detach()},
                {"num_known": k},
            )
        test = extract(model, data.loader(data.view("test_known")))
        metrics = {
            "known_acc": accuracy(test["logits"][:, :k], test["labels"]),
            "epochs": trainer.current_epoch,
            "num_params": sum(p.numel() for p in model.parameters()),
        }
        if opts.unknown_class:  # known test images the extra output claims
            metrics["known_as_unknown"] = float((test["logits"].argmax(1) == k).float().mean())
        if opts.trains_unknowns:  # the last epoch's unknowns against the pool's truth (eval.)
            metrics.update(pool_selection(data, module.picked))
        if has_val:
            v = extract(model, val)
            metrics["val_acc"] = accuracy(v["logits"][:, :k], v["labels"])
        return metrics


def progressive_callback(opts: SupervisedOptions, data_cfg, views: list) -> ProgressiveLearning:
    """Swap the train views' transforms for one that follows the progressive schedule."""
    tf = ProgressiveTransform(views[0].base, data_cfg.image_size, data_cfg.augment)
    for view in views:  # labelled and pool views share one base (the train set)
        view.transform = tf
    return ProgressiveLearning(opts.progressive, data_cfg.image_size, [tf])


def pool_selection(data, picked: list[torch.Tensor]) -> dict[str, float]:
    """`auto_unknown_precision|recall|auto_unknowns` of the pool images trained as unknown
    (dataset indices, repeats counted once) against the pool's hidden truth (evaluation; only
    the count without truth)."""
    pool = data.split.unlabelled
    taken = np.unique(torch.cat(picked).numpy()) if picked else np.zeros(0, np.int64)
    position = torch.from_numpy(np.nonzero(np.isin(pool, taken))[0])
    truth = data.pool_truth(pool)
    if truth is None:
        return {"auto_unknowns": len(position)}
    novel = torch.from_numpy(truth >= data.split.num_known)
    return {"auto_unknowns": len(position), **selection_quality(position, novel)}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
