"""The open-world loop on a person's own folders, made from real photos (cifar10-mini).

    .venv/bin/python benchmarks/own_folders.py [--source ../shared/datasets/cifar10-mini]
        [--folder benchmarks/out/own-photos] [--out benchmarks/out/own-photos-run] [--seed 0]
        [key=value ...]

Lays cifar10-mini out as a person would have it (symbolic links, no copies):
`labelled/<class>/` = half of the train images of the first 5 classes (airplane, automobile,
bird, cat, deer); `unlabelled/` = one flat folder of randomly named files with the other half of
those classes and every train image of the other 5 (dog, frog, horse, ship, truck): 2,500 known
+ 5,000 new; `test/<class>/` = the 2,000 test images of all 10 classes (5 of them new there).
Then runs `uniframework run configs/my-photos.yaml data.root=FOLDER` (plus the overrides) into
`--out` and prints what the run says without truth (the share of the
unlabelled photos that look new, the count, each group's size, confidence and silhouette) and
the evaluation on `test/`, then `predict` on 100 images of uniform noise (the detector refitted
on the final classifier should call them unknown). Nothing in the run knows which unlabelled photo
is which.
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

import numpy as np
from PIL import Image

from uniframework.config import load_config
from uniframework.pipeline import run
from uniframework.predict import predict

KNOWN = ["airplane", "automobile", "bird", "cat", "deer"]


def lay_out(source: Path, folder: Path, seed: int) -> None:
    """labelled/ + unlabelled/ + test/ from an ImageFolder `source` with train/ and test/."""
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    names = iter(rng.permutation(10**6))
    for cls in sorted(p.name for p in (source / "train").iterdir() if p.is_dir()):
        files = sorted((source / "train" / cls).iterdir())
        files = [files[i] for i in rng.permutation(len(files))]
        half = len(files) // 2 if cls in KNOWN else 0
        for f in files[:half]:
            _link(f, folder / "labelled" / cls / f.name)
        for f in files[half:]:
            _link(f, folder / "unlabelled" / f"IMG_{next(names):06d}{f.suffix}")
        for f in sorted((source / "test" / cls).iterdir()):
            _link(f, folder / "test" / cls / f.name)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=Path("../shared/datasets/cifar10-mini"))
    p.add_argument("--folder", type=Path, default=Path("benchmarks/out/own-photos"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/own-photos-run"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    lay_out(args.source, args.folder, args.seed)
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(
        "configs/my-photos.yaml", [f"data.root={args.folder}", f"seed={args.seed}", *args.overrides]
    )
    start = time.time()
    m = run(cfg, out)
    wall = time.time() - start
    n = int(m["discover.num_novel"])
    pool = 7500
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    photos = sum(len(list((args.folder / d).rglob("*.*"))) for d in ("labelled", "unlabelled"))
    per = wall / photos * 1000
    print(f"wall {wall:.0f} s ({per:.0f} s per 1,000 photos); peak RSS {rss:.2f} GB")
    print("without truth:")
    print(f"  unlabelled photos flagged new by openset: {m['openset.pool_flagged_share']:.3f}")
    joined = int(m.get("discover.pool_joined", 0))
    print(
        f"  discover pool: {m['discover.pool_size'] - joined} flagged + {joined} joined "
        f"(join_pool) of {pool}; new kinds counted: {n}"
    )
    for j in range(n):
        g = f"discover.group_{j + 1}"
        print(
            f"  new-{j + 1}: {m[g + '_size']} photos, confidence "
            f"{m.get(g + '_confidence', float('nan')):.3f}, silhouette "
            f"{m.get(g + '_silhouette', float('nan')):.3f}"
        )
    print("evaluation on test/ (2,000 photos, 5 known + 5 new classes):")
    keys = [
        "supervised.known_acc",
        "openset.auroc",
        "discover.test_novel_acc",
        "discover.test_novel_nmi",
        "incremental.all_acc",
        "incremental.old_acc",
        "incremental.new_acc",
        "incremental.detector_known_kept",
        "incremental.detector_unknown_caught",
    ]
    for key in keys:
        if key in m:
            print(f"  {key}: {m[key]:.3f}")
    noise = args.folder.parent / "noise"
    shutil.rmtree(noise, ignore_errors=True)
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(100):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise / f"{i}.png")
    flagged = np.mean([r["is_unknown"] for r in predict(out, [noise])])
    print(f"  uniform noise called unknown by predict: {flagged:.2f}")
    print(json.dumps({k: m[k] for k in sorted(m) if k in keys}, indent=None))


if __name__ == "__main__":
    main()
