"""Open-world detection figures for BENCHMARKS.md: ORE vs a plain Faster R-CNN on digit scenes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect.py [--epochs 6] [--num-train 600]
        [--out detect.json] [key=value ...]

Digit scenes (112 px, 2-5 digits per scene, 18-36 px high), two tasks: task 1 knows digits 0-4,
task 2 adds 5-7, digits 8 and 9 are never known (at task 1, 5-9 are unknown). Both methods use
the same detector (resnet_tiny + FPN Faster R-CNN, from scratch), the same epochs per task and
the same class-balanced exemplar fine-tune after task 2; the baseline has no unknown class, no
clustering and no energy identifier. One CPU thread. Prints known mAP@50 (prev / cur / all),
U-Recall@50, WI (at recall 0.8) and A-OSE per task and method, and the wall time per method.
`key=value` arguments set the detect stage's options for every method (e.g. `unknown_iou=0.3
prototype_every=10`, an earlier version's defaults). Writes benchmarks/out/<--out>.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from uniframework.config import load_config
from uniframework.pipeline import run

OUT = Path("benchmarks/out")
KEYS = ("map50_prev", "map50_cur", "map50_all", "u_recall50", "wi", "a_ose")


def run_method(method: str, args: argparse.Namespace) -> tuple[dict, float]:
    opts = {
        "method": method,
        "num_train": args.num_train,
        "num_test": args.num_test,
        "task_sizes": [5, 3],
        "max_epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "exemplars_per_class": args.exemplars,
        "figures": False,
        **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.options)},
    }
    cfg = load_config(
        None,
        [
            f"name=bench-detect-{method}",
            f"seed={args.seed}",
            "trainer.accelerator=cpu",
            f"stages=[{{detect: {json.dumps(opts)}}}]",
        ],
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run(cfg, Path(tmp) / method)
    return metrics, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--exemplars", type=int, default=20)
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="ore,baseline")
    parser.add_argument("--out", default="detect.json", help="file name under benchmarks/out")
    parser.add_argument("options", nargs="*", help="detect stage options, key=value")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    print(
        f"detect benchmark: {platform.processor() or platform.machine()}, 1 thread, "
        f"torch {torch.__version__}; {args.num_train} train / {args.num_test} test scenes, "
        f"{args.epochs} epochs per task + {args.finetune_epochs} fine-tune epochs, seed {args.seed}"
        + (f"; options {' '.join(args.options)}" if args.options else "")
    )
    results = {}
    for method in args.methods.split(","):
        metrics, seconds = run_method(method, args)
        results[method] = {"metrics": metrics, "seconds": seconds}
        print(f"{method}: {seconds / 60:.1f} min")
    header = f"{'method':<9} {'task':<5} " + " ".join(f"{k:>10}" for k in KEYS)
    print(header)
    for method, r in results.items():
        for t in (1, 2):
            row = []
            for k in KEYS:
                v = r["metrics"].get(f"detect.task{t}.{k}")
                if v is None:
                    row.append(f"{'-':>10}")
                elif k in ("wi", "a_ose"):
                    row.append(f"{v:>10.3f}" if k == "wi" else f"{v:>10.0f}")
                else:
                    row.append(f"{100 * v:>10.1f}")
            print(f"{method:<9} {t:<5} " + " ".join(row))
    print("(mAP and U-Recall in %, WI as a fraction, A-OSE a count of detections)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / args.out).write_text(json.dumps({"args": vars(args), **results}, indent=2))


if __name__ == "__main__":
    main()
