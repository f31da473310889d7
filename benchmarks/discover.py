"""Novel class discovery, 5 known / 5 novel: OpenMix vs k-means vs the Sinkhorn head.

    .venv/bin/python benchmarks/discover.py [--only digits|cifar10-mini] [--epochs 30]
        [--methods openmix,kmeans] [--accelerator gpu --workers 8 --image-size 32]

One supervised model per dataset (trained once), then each discovery method on the pool's
novel images (the NCD protocol, number of classes given) from that same model; a k-means run
with `num_novel: auto` reports the estimated class count beside the truth. Printed: Hungarian
accuracy (and NMI) on the unlabelled pool and on the test set's novel classes, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from uniframework.config import load_config
from uniframework.pipeline import run

OUT = Path("benchmarks/out/discover")
DATASETS = {
    "digits": (
        "configs/demo-novel.yaml",
        ["trainer.max_epochs=15"],
        {"supervised": {"lr": 0.003, "weight_decay": 0.0005}},
        {"lr": 0.002},
    ),
    "cifar10-mini": (
        "configs/cifar10-mini.yaml",
        [
            "data.root=../shared/datasets/cifar10-mini",
            "data.num_known=5",
            "data.image_size=16",
            "model.backbone=resnet_tiny",
            "trainer.max_epochs=15",
        ],
        {"supervised": {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0005}},
        {"lr": 0.002},
    ),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=list(DATASETS))
    p.add_argument("--epochs", type=int, default=30, help="discovery epochs (openmix, sinkhorn)")
    p.add_argument("--methods", default="openmix,sinkhorn,kmeans,kmeans-auto")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--image-size", type=int, help="override the dataset's image size")
    args = p.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {torch.get_num_threads()}"
    )
    results = {}
    for name, (config, overrides, supervised, extra) in DATASETS.items():
        if args.only not in (None, name):
            continue
        base = [
            *overrides,
            f"trainer.accelerator={args.accelerator}",
            f"data.num_workers={args.workers}",
            "trainer.enable_progress_bar=false",
        ]
        if args.image_size:
            base.append(f"data.image_size={args.image_size}")
        runs = {
            "openmix": {"method": "openmix", "max_epochs": args.epochs, **extra},
            "sinkhorn": {"method": "sinkhorn", "max_epochs": args.epochs, **extra},
            "kmeans": {"method": "kmeans"},
            "kmeans-auto": {"method": "kmeans", "num_novel": "auto"},
        }
        shared = OUT / name / "supervised"
        for label, opts in runs.items():
            if label not in args.methods.split(","):
                continue
            out = OUT / name / label
            cfg = load_config(config, [*base, f"name=discover-{name}"])
            cfg = cfg.model_copy(update={"stages": [supervised, {"discover": opts}]})
            if not (shared / "state.json").is_file():  # train the supervised model once
                run(cfg.model_copy(update={"stages": [supervised]}), shared)
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(shared, out)
            start = time.perf_counter()
            m = run(cfg, out)
            r = {k.removeprefix("discover."): v for k, v in m.items() if k.startswith("discover.")}
            r["wall_s"] = round(time.perf_counter() - start, 1)
            r["supervised_known_acc"] = m["supervised.known_acc"]
            results[f"{name}/{label}"] = r
            print(
                f"{name} {label}: novel acc {r['novel_acc']:.4f} (nmi {r['novel_nmi']:.3f}), "
                f"test novel acc {r['test_novel_acc']:.4f}, k = {r['num_novel']} "
                f"(truth {r['num_novel_true']}), {r['wall_s']} s",
                flush=True,
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
