"""What pretraining is worth: fine-tuning with 10% of the labels from each method's encoder.

    .venv/bin/python benchmarks/pretrain_value.py [--accelerator gpu --precision bf16-mixed]
        [--pretrain-epochs mae=100,simmim=100,ibot=50] [--pretrain-minutes 1.25]
        [--finetune-epochs 60] [--root ../shared/datasets/cifar10-mini]

On cifar10-mini (10k train images, 2k test), ViT-tiny with 4 px patches at 32 px: each method
pretrains on every train image (labels hidden), then `supervised` fine-tunes the whole network
on 10% of the labels (about 90 images a class after the 10% validation hold-out); the same
fine-tuning from random initialisation is the baseline. Printed per method: the encoder's k-NN
accuracy (k = 20, cosine, T = 0.07) and linear-probe accuracy on frozen features, the
fine-tuned test accuracy, the epochs each part ran and its wall time. `trainer.max_time` caps
each pretraining at `--pretrain-minutes`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from uniframework.config import load_config
from uniframework.pipeline import run

OUT = Path("benchmarks/out/pretrain_value")
FINETUNE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.1}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="../shared/datasets/cifar10-mini")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--pretrain-epochs", default="mae=100,simmim=100,ibot=50")
    p.add_argument("--pretrain-minutes", type=float, default=1.25)
    p.add_argument("--finetune-epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = p.parse_args()
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor()
    print(f"machine: {device}, {os.cpu_count()} cores, torch {torch.__version__}")
    epochs = {m: int(e) for m, e in (kv.split("=") for kv in args.pretrain_epochs.split(","))}
    mins, secs = divmod(int(args.pretrain_minutes * 60), 60)
    common = [
        f"data.root={args.root}",
        "data.labelled_fraction=0.1",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        "model.backbone=vit_tiny",
        "model.patch_size=4",
        "model.drop_path_rate=0.1",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        "trainer.deterministic=false",
    ]
    results = {}
    for method in ["random", *epochs]:
        stages = [{"supervised": {**FINETUNE, "max_epochs": args.finetune_epochs}}]
        if method != "random":
            pre = {"method": method, "max_epochs": epochs[method], "figures": False}
            stages.insert(0, {"pretrain": pre})
        cfg = load_config("configs/cifar10-mini.yaml", [*common, f"name=value-{method}"])
        cfg = cfg.model_copy(update={"stages": stages})
        out = OUT / method
        start = time.perf_counter()
        if method != "random":  # the pretraining alone is capped by the time budget
            capped = cfg.model_copy(
                update={
                    "stages": stages[:1],
                    "trainer": cfg.trainer.model_copy(
                        update={"max_time": f"00:00:{mins:02d}:{secs:02d}"}
                    ),
                }
            )
            run(capped, out, restart_from="pretrain")
        pre_s = time.perf_counter() - start
        metrics = run(cfg, out, restart_from="supervised")
        state = json.loads((out / "state.json").read_text())
        r = {
            "pretrain_epochs_run": _epochs_run(out / "checkpoints" / "pretrain" / "last.ckpt"),
            "pretrain_s": round(pre_s, 1),
            "finetune_s": state["seconds"].get("supervised"),
            "finetune_epochs": metrics.get("supervised.epochs"),
            "knn_acc": metrics.get("pretrain.knn_acc"),
            "linear_acc": metrics.get("pretrain.linear_acc"),
            "finetune_acc": metrics["supervised.known_acc"],
        }
        results[method] = r
        print(f"{method}: {json.dumps(r)}", flush=True)
    base = results["random"]["finetune_acc"]
    print("\nmethod  pretrain epochs (s)  k-NN   linear  fine-tuned (10% labels)  vs random")
    for m, r in results.items():
        pe = f"{r['pretrain_epochs_run']} ({r['pretrain_s']})" if m != "random" else "-"
        knn = "-" if r["knn_acc"] is None else f"{r['knn_acc']:.3f}"
        lin = "-" if r["linear_acc"] is None else f"{r['linear_acc']:.3f}"
        print(
            f"{m:<7} {pe:<20} {knn:<6} {lin:<7} {r['finetune_acc']:.4f}"
            f"{'':17} {r['finetune_acc'] - base:+.4f}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


def _epochs_run(path: Path) -> int | None:
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1


if __name__ == "__main__":
    main()
