"""The whole open-world loop against the demo issue's aims: digits (the demo) and cifar10-mini.

    .venv/bin/python benchmarks/openworld.py [--only demo|cifar10-mini] [key=value ...]

`demo` runs configs/demo.yaml, `cifar10-mini` configs/openworld-cifar10-mini.yaml, each from an
empty run folder (benchmarks/out/openworld-<name>/), with the given overrides. Printed per loop:
the aim figures (known accuracy, unknown AUROC of the chosen detector and of every scorer,
novel clustering accuracy on the detected pool, final accuracy over all classes, old / new),
seconds per stage and the process's peak resident memory. Run it on a quiet machine for the
wall time; the figures themselves are deterministic on the CPU.
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

from uniframework.config import load_config
from uniframework.io import read_json
from uniframework.pipeline import run

OUT = Path("benchmarks/out")
LOOPS = {"demo": "configs/demo.yaml", "cifar10-mini": "configs/openworld-cifar10-mini.yaml"}
AIMS = [  # (metric, aim, label)
    ("supervised.known_acc", 0.97, "known accuracy"),
    ("openset.auroc", 0.95, "unknown AUROC (chosen detector)"),
    ("discover.novel_acc", 0.90, "novel clustering accuracy (detected pool)"),
    ("incremental.all_acc", 0.90, "final accuracy, all classes"),
]
SCORERS = ["msp", "maxlogit", "energy", "energy_weibull", "mahalanobis", "knn"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=list(LOOPS))
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
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(config, ["trainer.enable_progress_bar=false", *args.overrides])
        start = time.perf_counter()
        m = run(cfg, out)
        wall = time.perf_counter() - start
        seconds = read_json(out / "state.json", {}).get("seconds", {})
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results[name] = {"metrics": m, "wall_s": wall, "seconds": seconds, "peak_gb": peak_gb}
        print(f"\n{name} ({config} {' '.join(args.overrides)}):")
        print("| figure | aim | measured |\n|---|---|---|")
        for key, aim, label in AIMS:
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
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openworld.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
