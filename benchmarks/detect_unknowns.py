"""Where the unknown objects go: a finished `detect` run's never-known objects, task by task.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect_unknowns.py RUN_DIR

For each task whose record the run left (`checkpoints/detect/task<t>.safetensors`), with that
task's model: the OWOD metrics with the run's identifier and with one refitted by this code (on
the same model: what a change of the identifier alone buys); then, with the run's identifier,
over the test images' unknown objects (classes not known at that task):
- `proposal`: share with an RPN proposal at IoU >= 0.5 (the RoI head's candidates);
- `raw unknown / raw known / raw none`: the detector's own output before the energy identifier
  (an "unknown" detection at IoU > 0.5; else a known-class one; else nothing);
- `final unknown / final known / final none`: the same after the identifier (what U-Recall and
  A-OSE count);
- `top unknown / top known`: the label of the highest-scoring detection on the object after the
  identifier (what a person reading the boxes sees; U-Recall counts an unknown box at any score);
and on the task's own training images (auto-labelling with the task's final model, the
procedure `OpenWorldRoIHeads.sample` runs every step, with the run's pseudo-labels of earlier
classes when it had them, drawn again with the previous task's model): where the picks land
(an unknown object, an unannotated object of an earlier class, background: IoU >= 0.5) and
the share of unknown objects that get one. Then the
held-out energies the identifier was fitted on: known vs auto-labelled unknown (median, IQR),
and the Weibull fits. The evaluation reads the test truth; the run's stages did not.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from uniframework.detect.datasets import collate
from uniframework.detect.engine import detect_all, heldout_logits, pseudo_label_previous
from uniframework.detect.metrics import owod_metrics
from uniframework.detect.model import OpenWorldDetector
from uniframework.detect.ore import auto_label_unknowns, fit_identifier, known_logits, read_out
from uniframework.detect.stage import _load_state, _scorer, model_kwargs, task_data, to_model_space
from uniframework.io import load_weights, read_json
from uniframework.openset.scores import energy
from uniframework.rundir import open_run


def outcome(dets: dict, gt: torch.Tensor, unknown_label: int, top: bool = False) -> list[str]:
    """Per unknown object `gt [G, 4]`: 'unknown' (an unknown detection at IoU > 0.5, at any
    score: what U-Recall counts), else 'known' (a known-class detection there), else 'none'.
    `top`: the label of the highest-scoring detection there instead (what a person reading the
    boxes sees)."""
    if len(gt) == 0:
        return []
    if len(dets["boxes"]) == 0:
        return ["none"] * len(gt)
    iou = box_iou(gt, dets["boxes"].float()) > 0.5  # [G, n]
    unk = dets["labels"] == unknown_label
    out = []
    for row in iou:
        if top and row.any():
            best = torch.nonzero(row).flatten()[dets["scores"][row].argmax()]
            out.append("unknown" if unk[best] else "known")
        else:
            out.append("unknown" if (row & unk).any() else "known" if row.any() else "none")
    return out


@torch.no_grad()
def diagnose(
    model: OpenWorldDetector,
    scorer,
    test,
    unknown_classes: list[int],
    keep_unknown: bool,
    over_known: float | None,
) -> dict:
    model.eval()
    unk_t = torch.tensor(unknown_classes)
    counts: dict[str, float] = {"objects": 0, "proposal": 0}
    for images, targets, _ in DataLoader(test, 4, collate_fn=collate):
        image_list, _ = model._prepare(images)
        feats = model.backbone(image_list.tensors)
        props, _, _ = model.rpn(image_list, feats)
        _, logits, deltas = model.roi_heads.head(feats, props, image_list.image_sizes)
        dets = model.roi_heads.postprocess(logits, deltas, props, image_list.image_sizes)
        sizes = [tuple(im.shape[-2:]) for im in images]
        dets = model.transform.postprocess(dets, image_list.image_sizes, sizes)
        scale = [  # proposals are in the transform's pixels; GT boxes in the image's
            torch.tensor([s[1] / r[1], s[0] / r[0]] * 2)
            for s, r in zip(image_list.image_sizes, sizes)
        ]
        for t, d, p, sc in zip(targets, dets, props, scale):
            gt = t["boxes"][torch.isin(t["labels"], unk_t)].float()
            counts["objects"] += len(gt)
            if len(gt) == 0:
                continue
            counts["proposal"] += int((box_iou(gt * sc, p).amax(1) >= 0.5).sum())
            final = read_out(
                d, scorer, model.roi_heads.num_classes, model.num_seen, keep_unknown, over_known
            )
            for stage, dd, top in (
                ("raw", d, False),
                ("final", final, False),
                ("top", final, True),
            ):
                for o in outcome(dd, gt, model.roi_heads.unknown_label, top):
                    counts[f"{stage} {o}"] = counts.get(f"{stage} {o}", 0) + 1
    n = max(1, counts["objects"])
    return {k: (v if k == "objects" else v / n) for k, v in counts.items()}


@torch.no_grad()
def auto_labels(
    model: OpenWorldDetector,
    data,
    labelled: list[int],
    unknown: list[int],
    pseudo: list[torch.Tensor] | None = None,
) -> dict:
    """On `data` (dataset labels) annotated with `labelled` only, as the task trains: where the
    auto-labelled proposals land (IoU >= 0.5 with an unknown object, with an object of a class
    known earlier but not annotated in this task, or neither) and the share of unknown objects
    that get one (the task's final model). `pseudo`: per image, the boxes [k, 4] the run's
    pseudo-labels added (annotated as well)."""
    model.eval()
    lab_t, unk_t = torch.tensor(labelled), torch.tensor(unknown)
    where = {"unknown": 0, "earlier": 0, "background": 0}
    objects = found = 0
    for images, targets, index in DataLoader(data, 4, collate_fn=collate):
        image_list, _ = model._prepare(images)
        feats = model.backbone(image_list.tensors)
        props, obj, _ = model.rpn(image_list, feats)
        sizes = [tuple(im.shape[-2:]) for im in images]
        for i, t, p, o, r, s in zip(index, targets, props, obj, image_list.image_sizes, sizes):
            scale = torch.tensor([r[1] / s[1], r[0] / s[0]] * 2)
            boxes = t["boxes"].float() * scale
            is_lab, is_unk = torch.isin(t["labels"], lab_t), torch.isin(t["labels"], unk_t)
            annotated = boxes[is_lab]
            if pseudo is not None:
                annotated = torch.cat([annotated, pseudo[i].float() * scale])
            idx = auto_label_unknowns(
                p, o, annotated, model.roi_heads.unknown_topk, model.roi_heads.unknown_iou
            )
            objects += int(is_unk.sum())
            for j in idx:
                iou = box_iou(p[j : j + 1], boxes)[0] if len(boxes) else torch.zeros(0)
                hit = iou >= 0.5
                kind = (
                    "unknown" if (hit & is_unk).any() else "earlier" if hit.any() else "background"
                )
                where[kind] += 1
            if is_unk.any() and len(idx):
                found += int((box_iou(p[idx], boxes[is_unk]).amax(0) >= 0.5).sum())
    picked = max(1, sum(where.values()))
    out = {f"picks on {k}": round(v / picked, 3) for k, v in where.items()}
    return {**out, "unknown objects": objects, "auto-labelled": round(found / max(1, objects), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    ctx, _ = open_run(args.run_dir)
    opts = dict(ctx.cfg.stage_list())["detect"]
    protocol, train, val, test, chunks = task_data(opts, ctx.cfg.seed)
    order, cpu, previous = protocol.order, torch.device("cpu"), None
    for t in range(len(protocol.tasks)):
        path = args.run_dir / "checkpoints" / "detect" / f"task{t + 1}.safetensors"
        if not path.is_file():
            break
        model = OpenWorldDetector(**model_kwargs(opts, len(order)))
        _load_state(model, None, load_weights(path)[0])
        model.num_seen = len(protocol.seen(t))
        record = read_json(args.run_dir / "detect" / f"task{t + 1}.json")
        scorer = _scorer(record.get("weibull"))
        unknown = protocol.unknown(t)
        names = [train.classes[c] for c in protocol.seen(t)], [train.classes[c] for c in unknown]
        print(f"task {t + 1}: seen {names[0]}, unknown {names[1]}, metrics {record['metrics']}")
        held = to_model_space(val.with_labels(protocol.seen(t)), order)
        torch.manual_seed(ctx.cfg.seed + t)  # the held-out pass samples RoIs: the same each time
        logits, labels = heldout_logits(model, held, cpu, 4)
        refit = fit_identifier(
            logits, labels, len(order), model.num_seen, opts.temperature,
            opts.degenerate_unknown_fit,
        )  # fmt: skip
        for what, sc in (("the run's identifier", scorer), ("refitted by this code", refit)):
            now = owod_metrics(
                detect_all(
                    model, test, sc, order, cpu, 4, opts.keep_unknown_detections,
                    opts.unknown_over_known,
                ),
                test.targets, protocol.seen(t), protocol.previous(t),
            )  # fmt: skip
            print(f"  metrics, {what}:", {k: round(v, 3) for k, v in now.items()})
        res = diagnose(
            model, scorer, test, unknown, opts.keep_unknown_detections, opts.unknown_over_known
        )
        print("  test unknown objects:", {k: round(v, 3) for k, v in res.items()})
        mine = train.subset(chunks[t])
        pseudo = None
        if t > 0 and opts.pseudo_label_score is not None:  # as the run: the previous model's
            plain = to_model_space(mine.with_labels(protocol.tasks[t]), order)
            with_pl, _ = pseudo_label_previous(
                previous, plain, len(protocol.previous(t)), opts.pseudo_label_score, cpu, 4
            )
            pseudo = [a["boxes"][len(b["boxes"]) :] for a, b in zip(with_pl.targets, plain.targets)]
        picks = auto_labels(model, mine, protocol.tasks[t], unknown, pseudo)
        print("  auto-labelling on the task's images:", picks)
        x = -energy(known_logits(logits, model.num_seen), opts.temperature)
        for name, m in (
            ("known", (labels > 0) & (labels <= len(order))),
            ("unknown", labels == len(order) + 1),
        ):
            v = x[m]
            q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75])) if len(v) else []
            print(f"  held-out {name}: n={len(v)}, -E quartiles {[round(float(a), 2) for a in q]}")
        print("  weibull:", record.get("weibull", {}) and record["weibull"]["identifier"])
        print("  weibull refitted by this code:", refit.identifier.state_dict())
        previous = model


if __name__ == "__main__":
    main()
