"""Supervised figures for BENCHMARKS.md: digits (10 classes) and cifar10-mini on the CPU.

    .venv/bin/python benchmarks/supervised.py [--budget-min 20] [--only digits|resnet18|vit_tiny]
    .venv/bin/python benchmarks/supervised.py --throughput-only

For each cifar10-mini model: the images/second of one training step (batch 128, median of
5 steps after 2 warm-up steps), then a run whose epoch count is set so that training fits the
wall-clock budget (Lightning's max_time stops it in any case), and its test accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from uniframework.config import load_config
from uniframework.models import build_classifier
from uniframework.pipeline import run

OUT = Path("benchmarks/out")
CIFAR = "../shared/datasets/cifar10-mini"
MODELS = {
    "resnet18": ["model.backbone=resnet18", "model.small_input=true"],
    "vit_tiny": [
        "model.backbone=vit_tiny",
        "model.patch_size=4",
        "model.drop_path_rate=0.1",
        "stages.supervised.optimizer=adamw",
        "stages.supervised.lr=1e-3",
        "stages.supervised.weight_decay=0.05",
    ],
}


def step_throughput(overrides: list[str], batch: int = 128, size: int = 32) -> float:
    """Images/second of one forward + backward + optimizer step."""
    cfg = load_config("configs/cifar10-mini.yaml", overrides)
    model = build_classifier(cfg.model, size, 10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times = []
    for i in range(7):
        t = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def timed_run(config: str, overrides: list[str], name: str) -> dict:
    cfg = load_config(config, overrides + [f"name={name}", "trainer.enable_progress_bar=false"])
    start = time.perf_counter()
    metrics = run(cfg, OUT / name, restart_from="supervised")
    return {**metrics, "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget-min", type=float, default=20.0)
    p.add_argument("--only", choices=["digits", *MODELS])
    p.add_argument("--throughput-only", action="store_true", help="step img/s, no training")
    args = p.parse_args()
    torch.manual_seed(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    results = {}
    if args.throughput_only:
        for name, overrides in MODELS.items():
            print(f"cifar10-mini {name}: {step_throughput(overrides):.1f} img/s per training step")
        return
    if args.only in (None, "digits"):
        r = timed_run("configs/digits.yaml", ["trainer.accelerator=cpu"], "bench-digits")
        results["digits"] = r
        print(
            f"digits resnet_tiny 16px: test acc {r['supervised.known_acc']:.4f}, "
            f"wall {r['wall_s']} s ({r['supervised.epochs']} epochs)"
        )
    for name, overrides in MODELS.items():
        if args.only not in (None, name):
            continue
        ips = step_throughput(overrides)
        budget_s = args.budget_min * 60
        # 9k training images (10% held out); keep ~10% of the budget for validation passes
        epochs = max(1, int(0.9 * budget_s * ips / 9000))
        hh, mm = divmod(int(args.budget_min), 60)
        r = timed_run(
            "configs/cifar10-mini.yaml",
            overrides
            + [
                f"data.root={CIFAR}",
                "trainer.accelerator=cpu",
                f"trainer.max_epochs={epochs}",
                f"trainer.max_time=00:{hh:02d}:{mm:02d}:00",
            ],
            f"bench-{name}",
        )
        r["train_step_img_per_s"] = round(ips, 1)
        results[name] = r
        print(
            f"cifar10-mini {name}: {ips:.1f} img/s per training step (batch 128); "
            f"{r['supervised.epochs']} epochs in {r['wall_s']} s; "
            f"test acc {r['supervised.known_acc']:.4f}"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "supervised.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
