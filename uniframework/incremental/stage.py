"""The `incremental` stage: grow the classifier task by task (class-incremental learning).

Task 0 is the supervised stage's classifier (`checkpoints/supervised.safetensors`, its
"unknown" output dropped) or, without one, trained here. Each later task adds the task's
classes as new head rows (old rows kept) and trains with the learner's recipe (`learners.py`);
learners with a memory then reselect exemplars by herding (`memory.py`). After every task the
model is scored on the test images of every class seen so far (the accuracy matrix,
`metrics.py`), with the linear head and, where a memory exists, the nearest-mean classifier.

Writes, per learner, `checkpoints/incremental/<learner>/task<t>.{safetensors,json}` (a cut-off
run resumes at the first task without its json; a task cut off mid-training resumes from its
`task<t>/last.ckpt`; each task draws from its own seed, so a resumed run ends as an uninterrupted
one); for the main learner `checkpoints/incremental.safetensors` (for `predict`),
`checkpoints/incremental_nme.safetensors` (class means, memory learners),
`incremental/memory.json`, `incremental/results.json`, `incremental/accuracy.png`,
`incremental/matrix.png`, and, with an `openset` stage in the config, an unknown detector
(`detector`, Mahalanobis by default) fitted again on the final classifier over every learned
class (`incremental/detector/`, `detector.py`; what `predict` and `export` use). With classes
named on the label page (`discover/labels.json`), the metrics add `named_classes`,
`merged_clusters`, `rejected_clusters`, and the checkpoint's metadata and `results.json` the
labels file's `sha256` (the report says which labels were used).

DDP: training runs on every rank; features, herding and scoring run on rank 0, which writes
each task's weights and memory; the other ranks wait at a barrier and read them back.
"""

from __future__ import annotations

import copy
import logging
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_only
from pydantic import Field, model_validator

from ..config import Section
from ..data import View
from ..errors import UserError
from ..io import load_matching, load_weights, read_json, save_weights, write_json
from ..models import Classifier, build_classifier, grow_head, shrink_head
from ..openset.stage import ScorerName
from ..registry import STAGES
from ..training import extract, fit, make_trainer
from .detector import refit_detector
from .learners import Learner, LearnerName, get_learner
from .memory import ExemplarMemory
from .metrics import final_accuracies, seen_accuracy, summarize, task_accuracies
from .module import IncrementalModule
from .nme import class_means, nme_predict
from .tasks import TaskPlan, plan_from_discover, plan_from_split

log = logging.getLogger(__name__)


class IncrementalOptions(Section):
    """Options of the `incremental` stage."""

    source: Literal["split", "discover"] = "split"  # where the new classes come from
    learner: LearnerName = "icarl"  # its model is saved; its metrics are unprefixed
    compare: list[LearnerName] = Field(default_factory=list)  # also run: `<name>.<metric>`
    memory: int = Field(2000, ge=1)  # total exemplars (iCaRL's K), or per class (below)
    memory_per_class: bool = False
    max_epochs: int | None = Field(None, ge=1)  # per task; None = trainer.max_epochs
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    temperature: float = Field(2.0, gt=0)  # LwF's T
    distill_weight: float = Field(1.0, ge=0)  # LwF's lambda_o
    lwf_memory: bool = False  # LwF with exemplar replay (the paper keeps none)
    balanced_epochs: int = Field(2, ge=1)  # ORE's class-balanced fine-tune, per task
    balanced_lr: float | None = Field(None, gt=0)  # None = lr / 10
    figures: bool = True
    # the unknown detector fitted again on the final classifier: a scorer, or "openset" for the
    # open-set stage's own kind (ORE). Feature scorers by default: logit scores are blind to
    # inputs far from every class once the new classes are learned (detector.py)
    detector: ScorerName | Literal["openset"] = "mahalanobis"

    @model_validator(mode="after")
    def _compare_differs(self) -> IncrementalOptions:
        if self.learner in self.compare or len(set(self.compare)) != len(self.compare):
            raise ValueError(
                f"compare {self.compare} must list other learners than '{self.learner}', once"
            )
        return self


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _device(ctx) -> str:
    gpu = ctx.cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return "cuda" if gpu and torch.cuda.is_available() else "cpu"


def _view(ctx, index, labels, train: bool) -> View:
    return ctx.data.subset_view(np.asarray(index), np.asarray(labels), train)


def _train(ctx, opts, model, old, distill, view, key, epochs, lr) -> None:
    """One Lightning fit of `model` on `view`, checkpoints in `checkpoints/<key>/`."""
    module = IncrementalModule(model, old, distill, opts, lr)
    trainer = make_trainer(ctx.cfg.trainer, ctx.run_dir, key, epochs)
    fit(trainer, module, ctx.data.loader(view, train=True), None)


def _task0_model(ctx, opts, plan: TaskPlan) -> Classifier:
    """The supervised stage's classifier over the k known classes, or one trained here."""
    k, cfg = plan.num_known, ctx.cfg
    if ctx.weights_path("supervised").is_file():
        model, meta = ctx.load_classifier("supervised")
        if model.num_classes not in (k, k + 1):
            raise UserError(
                f"checkpoints/supervised.safetensors has {model.num_classes} outputs, but "
                f"data.num_known = {k}: rerun supervised (--restart-from supervised)"
            )
        log.info("incremental: task 0 = the supervised classifier (%d outputs)", model.num_classes)
        return shrink_head(model, k)  # drops ORE's "unknown" output when it was trained
    path = ctx.run_dir / "checkpoints" / "incremental" / "task0.safetensors"
    model_cfg, start = ctx.model_start("incremental/task0")  # hand-off from `pretrain`, resume
    model = build_classifier(model_cfg, cfg.data.image_size, k, start and not path.is_file())
    if not path.is_file():
        log.info("incremental: no supervised checkpoint, training task 0 here")
        view = _view(ctx, plan.train_index[0], plan.train_labels[0], train=True)
        _train(ctx, opts, model, None, None, view, "incremental/task0", opts.max_epochs, opts.lr)
        if rank_zero_only.rank == 0:
            save_weights(path, model.state_dict(), {"num_known": k})
        _barrier()
    state, _ = load_weights(path)
    load_matching(model, state, str(path))
    return model


def _select(ctx, memory: ExemplarMemory, model, plan: TaskPlan, t: int, path) -> None:
    """Herding on task t's images with the current model, on rank 0; shared through `path`."""
    if rank_zero_only.rank == 0 or not _distributed():  # no group yet: every rank alike
        view = _view(ctx, plan.train_index[t], plan.train_labels[t], train=False)
        out = extract(model, ctx.data.loader(view), _device(ctx))
        memory.update(out["features"], out["labels"], out["index"])
        if rank_zero_only.rank == 0:
            write_json(path, memory.state_dict())
    _barrier()
    if _distributed():
        memory.load_state_dict(read_json(path))


def _evaluate(ctx, model, memory, plan: TaskPlan, t: int) -> dict:
    """Row t of the accuracy matrix (head, and NME with a memory) and the final accuracies."""
    split, dev = ctx.data.split, _device(ctx)
    test_view = ctx.data.subset_view(split.test, plan.test_labels, False, ctx.data.test)
    test = extract(model, ctx.data.loader(test_view), dev)
    labels = torch.as_tensor(plan.test_labels)
    pred = test["logits"][:, : plan.seen(t)].argmax(1)  # among the classes seen so far
    out = {
        "row": task_accuracies(pred, labels, plan.tasks, t),
        "final": final_accuracies(pred, labels, plan.num_known),
    }
    if memory is not None:
        ex = extract(model, ctx.data.loader(_view(ctx, memory.index, memory.labels, False)), dev)
        means = class_means(ex["features"], ex["labels"], plan.seen(t))  # [C_seen, D]
        nme = nme_predict(test["features"], means)
        out["nme_row"] = task_accuracies(nme, labels, plan.tasks, t)
        out["nme_final"] = final_accuracies(nme, labels, plan.num_known, "nme_")
        out["means"] = means
    return out


def run_learner(ctx, opts, plan: TaskPlan, learner: Learner, base: Classifier) -> dict:
    """Every task with one learner; returns (on rank 0) its matrices, final scores and model."""
    folder = ctx.run_dir / "checkpoints" / "incremental" / learner.name
    model = copy.deepcopy(base)
    memory = ExemplarMemory(opts.memory, opts.memory_per_class) if learner.keeps_memory else None
    rows, nme_rows, last = [], [], {}
    for t, classes in enumerate(plan.tasks):
        # the task's random draws (new head rows, shuffles, augmentation) start from its own
        # seed: a rerun that loads the earlier tasks from their files trains this one the same
        L.seed_everything(ctx.cfg.seed + t, workers=True, verbose=False)
        if t > 0:
            grow_head(model, len(classes))
        done = read_json(folder / f"task{t}.json")
        if done is not None:  # finished by an earlier, cut-off run
            state, _ = load_weights(folder / f"task{t}.safetensors")
            load_matching(model, state, str(folder / f"task{t}.safetensors"))
            if memory is not None:
                memory.load_state_dict(done["memory"])
            rows.append(done["row"])
            nme_rows.append(done.get("nme_row"))
            last = done
            continue
        if t > 0:
            # the previous model, kept only for this task's distillation
            old = copy.deepcopy(model) if learner.distill else None
            if old is not None:
                shrink_head(old, plan.seen(t - 1))
            index, labels = plan.train_index[t], plan.train_labels[t]
            if learner.memory:  # exemplar replay beside the new task's images
                index = np.concatenate([index, memory.index.numpy()])
                labels = np.concatenate([labels, memory.labels.numpy()])
            view = _view(ctx, index, labels, train=True)
            key = f"incremental/{learner.name}/task{t}"
            _train(ctx, opts, model, old, learner.distill, view, key, opts.max_epochs, opts.lr)
            del old
        if memory is not None:
            _select(ctx, memory, model, plan, t, folder / f"task{t}.memory.json")
        if learner.balanced_finetune and t > 0:  # ORE: balanced exemplar set, old + new
            view = _view(ctx, memory.index, memory.labels, train=True)
            key = f"incremental/{learner.name}/task{t}_balanced"
            lr = opts.balanced_lr or opts.lr / 10
            _train(ctx, opts, model, None, None, view, key, opts.balanced_epochs, lr)
        if rank_zero_only.rank == 0:
            ev = _evaluate(ctx, model, memory, plan, t)
            rows.append(ev["row"])
            nme_rows.append(ev.get("nme_row"))
            last = {k: v for k, v in ev.items() if k != "means"}
            save_weights(folder / f"task{t}.safetensors", model.state_dict(), {"task": t})
            record = {**last, "memory": memory.state_dict() if memory else None}
            write_json(folder / f"task{t}.json", record)  # written last: marks the task done
            log.info(
                "incremental %s: task %d, %d classes, accuracy on seen %.4f",
                learner.name,
                t,
                plan.seen(t),
                float(seen_accuracy(_square(rows), plan.test_counts()[: t + 1])[-1]),
            )
        _barrier()
    return {"model": model, "memory": memory, "rows": rows, "nme_rows": nme_rows, "last": last}


def _square(rows: list[list[float]]) -> np.ndarray:
    """Lower-triangular rows -> A [T, T], NaN above the diagonal."""
    a = np.full((len(rows), len(rows)), np.nan)
    for t, row in enumerate(rows):
        a[t, : len(row)] = row
    return a


def _check_memory(opts: IncrementalOptions, plan: TaskPlan) -> None:
    uses = [n for n in [opts.learner, *opts.compare] if get_learner(n).keeps_memory]
    if uses and not opts.memory_per_class and opts.memory < plan.num_classes:
        raise UserError(
            f"stages.incremental.memory = {opts.memory} is smaller than the "
            f"{plan.num_classes} classes the learners {uses} will see: every class needs an "
            f"exemplar; set stages.incremental.memory >= {plan.num_classes}"
        )


@STAGES.register("incremental")
class IncrementalStage:
    """Class-incremental learning: fine-tune, replay, LwF, iCaRL, ORE's balanced fine-tune."""

    Options = IncrementalOptions

    @staticmethod
    def run(ctx, opts: IncrementalOptions) -> dict[str, float]:
        if ctx.data.user_mode and "source" not in opts.model_fields_set:
            opts = opts.model_copy(update={"source": "discover"})  # the only source there is
        if opts.source == "discover":
            plan = plan_from_discover(ctx.data, ctx.run_dir / "discover" / "discovered.json")
        else:
            plan = plan_from_split(ctx.data)
        _check_memory(opts, plan)
        base = _task0_model(ctx, opts, plan)
        names = [opts.learner, *opts.compare]
        results = {}
        for name in names:
            res = run_learner(ctx, opts, plan, get_learner(name, opts.lwf_memory), base)
            if name != opts.learner:  # only the main learner's model is kept
                res.pop("model")
            results[name] = res
        if rank_zero_only.rank != 0:
            return {}
        metrics = _report(ctx, opts, plan, results)
        # the world is still open: the unknown detector, fitted again on the final classifier
        model = results[opts.learner]["model"]
        return metrics | refit_detector(ctx, model, plan, opts.detector, _device(ctx))


def _report(ctx, opts, plan: TaskPlan, results: dict) -> dict[str, float]:
    """Metrics (main learner unprefixed, others `<name>.`), artifacts and figures."""
    counts, out_dir = plan.test_counts(), ctx.run_dir / "incremental"
    metrics: dict[str, float] = {}
    curves, summary = {}, {}
    for name, res in results.items():
        prefix = "" if name == opts.learner else f"{name}."
        a = _square(res["rows"])
        m = summarize(a, counts) | res["last"]["final"]
        curves[name] = seen_accuracy(a, counts).tolist()
        summary[name] = {"matrix": a.tolist(), "seen_acc": curves[name]}
        if res["memory"] is not None:
            nme = _square(res["nme_rows"])
            m |= summarize(nme, counts, "nme_") | res["last"]["nme_final"]
            curves[f"{name} (NME)"] = seen_accuracy(nme, counts).tolist()
            summary[name] |= {"nme_matrix": nme.tolist(), "nme_seen_acc": curves[f"{name} (NME)"]}
        metrics |= {f"{prefix}{key}": float(v) for key, v in m.items()}
    main = results[opts.learner]
    model, memory = main["model"], main["memory"]
    metrics |= {"num_classes": plan.num_classes, "num_tasks": len(plan.tasks)}
    labels = plan.labels or {}
    metrics |= {key: v for key, v in labels.items() if key != "sha256"}
    ctx.save_model(
        "incremental",
        model,
        num_known=plan.num_known,
        learner=opts.learner,
        tasks=plan.tasks,
        source=opts.source,
        model_class_names=plan.class_names,
        output_truth={str(c): t for c, t in plan.output_truth.items()},
        labels_sha256=labels.get("sha256"),
    )
    if memory is not None:
        metrics["memory_size"] = len(memory)
        write_json(out_dir / "memory.json", memory.state_dict())
        ex = extract(model, ctx.data.loader(_view(ctx, memory.index, memory.labels, False)))
        means = class_means(ex["features"], ex["labels"], plan.num_classes)
        save_weights(
            ctx.weights_path("incremental_nme"), {"means": means}, {"learner": opts.learner}
        )
    write_json(
        out_dir / "results.json",
        {
            "tasks": plan.tasks,
            "test_counts": counts.tolist(),
            "learners": summary,
            "class_names": plan.class_names,
            "labels": plan.labels,
        },
    )
    if opts.figures:
        from .figures import accuracy_curves, matrix_heatmap

        seen = [plan.seen(t) for t in range(len(plan.tasks))]
        accuracy_curves(curves, seen, out_dir / "accuracy.png")
        matrix_heatmap(
            _square(main["rows"]), f"{opts.learner}: accuracy matrix", out_dir / "matrix.png"
        )
    return metrics
