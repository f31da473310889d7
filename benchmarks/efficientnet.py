"""EfficientNet figures for BENCHMARKS.md: compound scaling and progressive learning on the CPU.

    .venv/bin/python benchmarks/efficientnet.py [--only table|cifar] [--budget-min 6]
        [--runs plain,progressive,progressive-torchvision]

`table`: for B0–B7 (published presets), V2-S/M/L and `efficientnet(φ)` at several φ: parameters
(1000-class head), multiply-adds at the model's own resolution (torch's FlopCounterMode, which
counts 2 FLOPs per multiply-add, halved to compare with the papers' "FLOPs"), and for B0–B3
forward images/s (batch 8, eval, torch.set_num_threads(1), median of 3 after 1 warm-up).
Parameter and FLOP counts are taken on the meta device, so no weights are allocated.

`cifar`: cifar10-mini, EfficientNet-B0 small-image variant at 32 px, with and without
progressive learning (16 → 32 px, RandAugment 5 → 15, dropout 0.1 → 0.3, 4 stages), each under
the same wall-clock budget (trainer.max_time) on `--threads` threads (default 1). An "epoch" is
5 batches of 128 (640 images) and there is no validation split, so that several stages fit; the
epoch count is set from the training-step time at each stage's size so that training fills ~85%
of the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from uniframework.config import load_config
from uniframework.models.efficientnet import efficientnet, efficientnet_preset
from uniframework.pipeline import run
from uniframework.supervised.progressive import ProgressiveOptions, progressive_schedule

OUT = Path("benchmarks/out")
CIFAR = "../shared/datasets/cifar10-mini"
# paper: parameters (M) and FLOPs (B multiply-adds) — V1 Table 2, V2 Table 7
PAPER = {
    "b0": (5.3, 0.39),
    "b1": (7.8, 0.70),
    "b2": (9.2, 1.0),
    "b3": (12, 1.8),
    "b4": (19, 4.2),
    "b5": (30, 9.9),
    "b6": (43, 19),
    "b7": (66, 37),
    "v2_s": (22, 8.8),
    "v2_m": (54, 24),
    "v2_l": (120, 53),
}
PHIS = [0, 0.5, 1, 2, 2.5, 3, 4, 5, 6, 7]


def count(build) -> tuple[float, float, int]:
    """(parameters M, multiply-adds B, resolution) of a model built on the meta device."""
    with torch.device("meta"):
        model = build().eval()
        r = model.scaling.resolution
        x = torch.empty(1, 3, r, r)
    with FlopCounterMode(display=False) as fc:
        model(x)
    params = sum(p.numel() for p in model.parameters())
    return params / 1e6, fc.get_total_flops() / 2e9, r


def forward_img_per_s(name: str, batch: int = 8) -> float:
    model = efficientnet_preset(name, num_classes=1000).eval()
    r = model.scaling.resolution
    x = torch.randn(batch, 3, r, r)
    times = []
    with torch.no_grad():
        for i in range(4):
            t = time.perf_counter()
            model(x)
            if i:
                times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def table() -> dict:
    out: dict = {"presets": {}, "phi": {}}
    print("| model | params (M) | paper | MACs (B) | paper FLOPs | resolution | fwd img/s |")
    print("|---|---|---|---|---|---|---|")
    for name, (p_params, p_flops) in PAPER.items():
        params, macs, r = count(lambda n=name: efficientnet_preset(n, num_classes=1000))
        ips = forward_img_per_s(name) if name in ("b0", "b1", "b2", "b3") else None
        out["presets"][name] = dict(params_m=params, macs_b=macs, resolution=r, img_s=ips)
        cell = f"{ips:.1f}" if ips else "—"
        print(f"| {name} | {params:.2f} | {p_params} | {macs:.3f} | {p_flops} | {r} | {cell} |")
    print("\n| φ | params (M) | MACs (B) | resolution | MACs / MACs(φ=0) | 2^φ |")
    print("|---|---|---|---|---|---|")
    base = None
    for phi in PHIS:
        params, macs, r = count(lambda p=phi: efficientnet(p, num_classes=1000))
        base = base or macs
        out["phi"][str(phi)] = dict(params_m=params, macs_b=macs, resolution=r)
        print(f"| {phi} | {params:.2f} | {macs:.3f} | {r} | {macs / base:.2f} | {2**phi:.2f} |")
    return out


def step_seconds(size: int, batch: int = 128) -> float:
    """Seconds of one training step of B0 (small-image variant) at `size` px."""
    model = efficientnet_preset("b0", num_classes=10, small_input=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times = []
    for i in range(3):
        t = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


RUNS = {  # name -> overrides; `progressive-torchvision`: RandAugment on torchvision's milder scale
    "plain": [],
    "progressive": ["stages.supervised.progressive=true"],
    "progressive-torchvision": ["stages.supervised.progressive={randaugment_scale: torchvision}"],
}


def cifar(budget_min: float, runs: list[str]) -> dict:
    base = [
        f"data.root={CIFAR}",
        "model.backbone=efficientnet_b0",
        "model.small_input=true",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        f"trainer.max_time=00:00:{int(budget_min):02d}:{int(budget_min % 1 * 60):02d}",
    ]
    opts = ProgressiveOptions()
    sec = {s: step_seconds(s) for s in sorted({16, 21, 27, 32})}
    print("train step s (batch 128): " + ", ".join(f"{s} px {t:.2f}" for s, t in sec.items()))

    # A 32 px step of B0 takes seconds on 1 thread, so the budget holds only a few thousand
    # images: an "epoch" here is 5 batches (640 images, reshuffled each time) so that the 4
    # progressive stages fit, and there is no validation split (last weights are scored).
    def epoch_s(size: int) -> float:
        return 5 * sec[size]

    usable = 0.85 * budget_min * 60
    plain_epochs = max(1, int(usable / epoch_s(32)))
    prog_epochs = plain_epochs
    while True:  # largest epoch count whose schedule still fits the budget
        plan = progressive_schedule(opts, 32, prog_epochs + 1)
        if sum(epoch_s(s.image_size) for s in plan) > usable:
            break
        prog_epochs += 1
    base += ["trainer.limit_train_batches=5", "data.val_fraction=0"]
    results = {}
    for name in runs:
        extra = RUNS[name]
        epochs = prog_epochs if extra else plain_epochs
        cfg = load_config(
            "configs/cifar10-mini.yaml",
            base + extra + [f"trainer.max_epochs={epochs}", f"name=bench-effnet-{name}"],
        )
        shutil.rmtree(
            OUT / f"bench-effnet-{name}", ignore_errors=True
        )  # no resume from a stale run
        start = time.perf_counter()
        metrics = run(cfg, OUT / f"bench-effnet-{name}")
        r = {**metrics, "wall_s": round(time.perf_counter() - start, 1), "planned": epochs}
        results[name] = r
        print(
            f"cifar10-mini efficientnet_b0 small-input {name}: {r['supervised.epochs']} of "
            f"{epochs} planned epochs in {r['wall_s']} s; test acc "
            f"{r['supervised.known_acc']:.4f}"
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["table", "cifar"])
    p.add_argument("--budget-min", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (2 on a quiet 2-core box)")
    p.add_argument("--runs", default="plain,progressive", help=f"cifar runs, of {', '.join(RUNS)}")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    results = {}
    if args.only in (None, "table"):
        results["table"] = table()
    if args.only in (None, "cifar"):
        results["cifar"] = cifar(args.budget_min, args.runs.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "efficientnet.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
