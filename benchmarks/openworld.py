"""The whole open-world loop against its aims: digits and cifar10-mini.

    .venv/bin/python benchmarks/openworld.py [--only demo|cifar10-mini] [--baseline | --no-loop]
        [key=value ...]

`demo` runs configs/demo-novel.yaml (the digits loop on a pool of novel images, the count
given), `cifar10-mini` configs/openworld-cifar10-mini.yaml, each from an empty run folder
(benchmarks/out/openworld-<name>/), with the given overrides. Printed per loop:
the aim figures (known accuracy, unknown AUROC of the chosen detector and of every scorer,
novel clustering accuracy on the detected pool, final accuracy over all classes, old / new),
seconds per stage and the process's peak resident memory. Run it on a quiet machine for the
wall time; the figures themselves are deterministic on the CPU.

`--baseline` also runs benchmarks/baseline.py (a plain 5-conv CNN, MSP / energy, k-means, naive
fine-tune; always 32 px) on the same config's split — the same known / val / pool / test images
— clustering the pool the config's discover stage clusters (`pool: novel | detected`), and
prints the loop and the baseline side by side: each figure, the margin (loop − baseline) and
the seconds per stage. `--no-loop` runs the baseline instead of the loop and compares it with
the figures a previous loop left in its run folder (none there: the baseline column alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import torch
import yaml

from uniframework.config import load_config
from uniframework.io import read_json
from uniframework.pipeline import run

OUT = Path("benchmarks/out")
LOOPS = {"demo": "configs/demo-novel.yaml", "cifar10-mini": "configs/openworld-cifar10-mini.yaml"}
AIMS = {  # loop -> [(metric, aim, label)]
    "demo": [
        ("supervised.known_acc", 0.97, "known accuracy"),
        ("openset.auroc", 0.95, "unknown AUROC (chosen detector)"),
        ("discover.novel_acc", 0.90, "novel clustering accuracy (detected pool)"),
        ("incremental.all_acc", 0.90, "final accuracy, all classes"),
    ],
    "cifar10-mini": [  # the real-photo loop's absolute aims
        ("supervised.known_acc", 0.85, "known accuracy"),
        ("openset.auroc", 0.75, "unknown AUROC (chosen detector)"),
        ("discover.novel_acc", 0.80, "novel clustering accuracy (pool)"),
        ("incremental.all_acc", 0.65, "final accuracy, all classes"),
        ("incremental.old_acc", 0.70, "  old classes"),
    ],
}
MARGINS = {  # the loop must beat the baseline by at least this much (the real-photo loop's aims)
    "supervised.known_acc": 0.05,
    "openset.auroc": 0.10,
    "discover.novel_acc": 0.10,
    "incremental.all_acc": 0.30,
}
SCORERS = ["msp", "maxlogit", "energy", "energy_weibull", "mahalanobis", "knn", "knn_pool"]
SIDE_BY_SIDE = [  # (metric, label); the baseline's `openset.auroc` is its energy score's
    ("supervised.known_acc", "known accuracy"),
    ("openset.auroc", "unknown AUROC (loop: chosen detector; baseline: energy)"),
    ("openset.msp.auroc", "unknown AUROC, MSP"),
    ("openset.energy.auroc", "unknown AUROC, energy"),
    ("discover.novel_acc", "novel clustering accuracy"),
    ("incremental.all_acc", "final accuracy, all classes"),
    ("incremental.old_acc", "  old classes"),
    ("incremental.new_acc", "  new classes"),
]
STAGES = ["supervised", "openset", "discover", "incremental"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=list(LOOPS))
    p.add_argument("--baseline", action="store_true", help="also run benchmarks/baseline.py")
    p.add_argument("--no-loop", action="store_true", help="baseline only, vs the last loop run")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    results = {}
    for name, config in LOOPS.items():
        if args.only not in (None, name):
            continue
        out = OUT / f"openworld-{name}"
        cfg = load_config(config, ["trainer.enable_progress_bar=false", *args.overrides])
        if args.no_loop:
            results[name] = side_by_side(name, config, cfg, args.overrides, out, None)
            continue
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        m = run(cfg, out)
        wall = time.perf_counter() - start
        seconds = read_json(out / "state.json", {}).get("seconds", {})
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results[name] = {"metrics": m, "wall_s": wall, "seconds": seconds, "peak_gb": peak_gb}
        print(f"\n{name} ({config} {' '.join(args.overrides)}):")
        print("| figure | aim | measured |\n|---|---|---|")
        for key, aim, label in AIMS[name]:
            got = m.get(key)
            cell = "–" if got is None else f"{got:.3f}" + (" (met)" if got >= aim else "")
            print(f"| {label} (`{key}`) | >= {aim} | {cell} |")
        print(
            "old / new classes: "
            f"{m.get('incremental.old_acc', float('nan')):.3f} / "
            f"{m.get('incremental.new_acc', float('nan')):.3f}; detected pool "
            f"{m.get('discover.pool_size', 0):.0f} images, "
            f"{m.get('discover.pool_novel_fraction', float('nan')):.3f} novel"
        )
        print(
            "AUROC by scorer: "
            + ", ".join(
                f"{s} {m[f'openset.{s}.auroc']:.3f}" for s in SCORERS if f"openset.{s}.auroc" in m
            )
        )
        print(
            f"wall {wall:.0f} s ("
            + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items())
            + f"), peak RSS {peak_gb:.2f} GB (the largest of the loops so far)"
        )
        if args.baseline:
            results[name].update(side_by_side(name, config, cfg, args.overrides, out, wall))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openworld.json").write_text(json.dumps(results, indent=2))


def side_by_side(name, config, cfg, overrides, out, wall) -> dict:
    """Run the baseline on `config`'s split; print it beside the loop's figures in `out`."""
    from baseline import run_baseline  # benchmarks/baseline.py (this script's folder)

    pool = next(
        (getattr(o, "pool", "novel") for s, o in cfg.stage_list() if s == "discover"), "novel"
    )
    base, base_s = run_baseline(config, overrides, pool)
    loop = read_json(out / "metrics.json", {})
    loop_s = read_json(out / "state.json", {}).get("seconds", {})
    if wall is None and loop_s:  # a previous run: its stages' seconds, no start-up
        wall = sum(loop_s.values())
        saved = out / "config.yaml"
        if saved.is_file() and yaml.safe_load(saved.read_text()) != cfg.to_dict():
            print(f"warning: {out} was run with another config than {config} {overrides}")
    print(f"\n{name}: loop ({out}) vs baseline (benchmarks/baseline.py, 32 px, pool: {pool})")
    print("| figure | loop | baseline | loop − baseline | margin aim |\n|---|---|---|---|---|")

    def cell(x, fmt="{:.3f}"):
        return "–" if x is None else fmt.format(x)

    for key, label in SIDE_BY_SIDE:
        a, b = loop.get(key), base.get(key)
        margin = None if a is None or b is None else a - b
        want = MARGINS.get(key)
        met = want is not None and margin is not None and margin >= want
        aim = "" if want is None else f">= +{want:.2f}" + (" (met)" if met else "")
        print(f"| {label} | {cell(a)} | {cell(b)} | {cell(margin, '{:+.3f}')} | {aim} |")
    sizes = [m.get("discover.pool_size") for m in (loop, base)]
    size_cells = f"{cell(sizes[0], '{:.0f}')} | {cell(sizes[1], '{:.0f}')}"
    print(f"| discover pool (images) | {size_cells} | | |")
    for stage in [*STAGES, "total"]:
        a = wall if stage == "total" else loop_s.get(stage)
        b = sum(base_s.values()) if stage == "total" else base_s.get(stage)
        margin = None if a is None or b is None else a - b
        print(f"| seconds, {stage} | {cell(a, '{:.0f}')} | {cell(b, '{:.0f}')} | "
              f"{cell(margin, '{:+.0f}')} | |")  # fmt: skip
    print(f"(baseline total includes {base_s['load']:.0f} s loading the split into memory; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB, "
          "this process so far)")  # fmt: skip
    return {"metrics": loop, "seconds": loop_s, "wall_s": wall, "baseline_pool": pool,
            "baseline": base, "baseline_seconds": base_s}  # fmt: skip


if __name__ == "__main__":
    main()
