"""Class-incremental figures for BENCHMARKS.md: every learner on digits and cifar10-mini (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/incremental.py [--only digits|cifar10-mini]

Both: 5 tasks of 2 classes (task 0 = 2 known classes, trained by the stage itself), resnet_tiny,
AdamW, the same epochs for every task. Printed per learner: average incremental accuracy,
last accuracy and forgetting for the linear head and, with a memory, the nearest-mean-of-
exemplars classifier (NME). Runs go to benchmarks/out/incremental-<dataset>/.
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

OUT = Path("benchmarks/out")
LEARNERS = ["icarl", "finetune", "replay", "lwf", "ore"]  # icarl's model is the one saved
SETUPS = {
    # 1,437 train images; memory 200 = 20 per class at the end
    "digits": (
        "configs/digits.yaml",
        ["data.image_size=16", "data.batch_size=64", "model.backbone=resnet_tiny"],
        {"memory": 200, "max_epochs": 10, "lr": 0.003},
    ),
    # 1,000 train images per class; 16 px and 4 epochs per task to fit a 1-thread CPU budget
    "cifar10-mini": (
        "configs/cifar10-mini.yaml",
        [
            "data.root=../shared/datasets/cifar10-mini",
            "data.image_size=16",
            "data.batch_size=128",
            "model.backbone=resnet_tiny",
        ],
        {"memory": 500, "max_epochs": 4, "lr": 0.002},
    ),
}


def bench(name: str) -> dict:
    config, overrides, opts = SETUPS[name]
    stage = {"learner": LEARNERS[0], "compare": LEARNERS[1:], **opts}
    cfg = load_config(
        config,
        overrides
        + [
            f"name=incremental-{name}",
            "data.num_known=2",
            "data.num_tasks=5",
            "data.val_fraction=0",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            f"stages=[{{incremental: {json.dumps(stage)}}}]",
        ],
    )
    start = time.perf_counter()
    metrics = run(cfg, OUT / f"incremental-{name}", restart_from="incremental")
    wall = round(time.perf_counter() - start, 1)
    print(f"\n{name}: 5 tasks x 2 classes, {opts}, wall {wall} s")
    print(
        f"{'learner':<9} {'avg_acc':>8} {'last_acc':>8} {'forget':>7} "
        f"{'NME avg':>8} {'NME last':>8} {'NME fgt':>8}"
    )
    rows = {}
    for learner in LEARNERS:
        p = "incremental." if learner == LEARNERS[0] else f"incremental.{learner}."
        row = {k: metrics.get(p + k) for k in ("avg_acc", "last_acc", "forgetting")}
        row |= {
            f"nme_{k}": metrics.get(f"{p}nme_{k}") for k in ("avg_acc", "last_acc", "forgetting")
        }
        rows[learner] = row
        cells = " ".join(
            f"{100 * v:8.1f}" if v is not None else f"{'-':>8}"
            for v in (
                row["avg_acc"],
                row["last_acc"],
                row["forgetting"],
                row["nme_avg_acc"],
                row["nme_last_acc"],
                row["nme_forgetting"],
            )
        )
        print(f"{learner:<9} {cells}")
    return {"wall_s": wall, "options": opts, "learners": rows}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=list(SETUPS))
    args = p.parse_args()
    torch.manual_seed(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    results = {n: bench(n) for n in SETUPS if args.only in (None, n)}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"incremental{'-' + args.only if args.only else ''}.json"
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
