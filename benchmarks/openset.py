"""Open-set figures for BENCHMARKS.md: unknown detection with and without ORE's components.

    .venv/bin/python benchmarks/openset.py [--only digits|cifar] [--cifar-epochs 15]

Digits: known 0-4, unknown 5-9 (resnet_tiny, 16 px, 15 epochs). cifar10-mini: known = the first
5 classes, unknown = the last 5 (resnet_tiny, small stem, 32 px). Each dataset is run three times on
the same seed: plain cross-entropy, + contrastive clustering, + contrastive clustering + the
auto-labelled unknown class. Prints known accuracy and AUROC / FPR@95 of every scorer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from uniframework.config import load_config
from uniframework.pipeline import run

OUT = Path("benchmarks/out")
VARIANTS = {
    "plain": [],
    "+cc": ["stages.supervised.contrastive=true"],
    "+cc+unk": [
        "stages.supervised.contrastive=true",
        "stages.supervised.unknown_class=true",
        "stages.supervised.unknown_topk=2",
    ],
}
SCORERS = ["msp", "maxlogit", "energy", "energy_weibull", "mahalanobis", "knn", "unknown_class"]


def setups(cifar_epochs: int) -> dict[str, list[str]]:
    return {
        "digits": ["data.num_known=5", "trainer.max_epochs=15"],
        "cifar": [
            "data.dataset=imagefolder",
            "data.root=../shared/datasets/cifar10-mini",
            "data.image_size=32",
            "data.num_known=5",
            "data.batch_size=128",
            "model.backbone=resnet_tiny",
            "model.small_input=true",
            f"trainer.max_epochs={cifar_epochs}",
            "stages.supervised.optimizer=sgd",
            "stages.supervised.lr=0.05",
            "stages.supervised.weight_decay=5e-4",
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["digits", "cifar"])
    p.add_argument("--cifar-epochs", type=int, default=15)
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}")
    results = {}
    for data, base in setups(args.cifar_epochs).items():
        if args.only not in (None, data):
            continue
        for variant, extra in VARIANTS.items():
            name = f"bench-openset-{data}-{variant.replace('+', '')}"
            overrides = [
                *base,
                *extra,
                "trainer.accelerator=cpu",
                "trainer.enable_progress_bar=false",
                f"name={name}",
            ]
            cfg = load_config("configs/demo-novel.yaml", overrides)
            start = time.perf_counter()
            m = run(cfg, OUT / name, restart_from="supervised")
            wall = time.perf_counter() - start
            results[f"{data} {variant}"] = {**m, "wall_s": round(wall, 1)}
            row = "  ".join(
                f"{s} {m[f'openset.{s}.auroc']:.3f}/{m[f'openset.{s}.fpr95']:.2f}"
                for s in SCORERS
                if f"openset.{s}.auroc" in m
            )
            print(
                f"{data:6s} {variant:8s} known acc {m['supervised.known_acc']:.4f}  "
                f"AUROC/FPR95: {row}  ({wall:.0f} s)",
                flush=True,
            )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openset.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
