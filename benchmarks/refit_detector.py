"""Which unknown detector to fit again on the final classifier: each kind, refitted on a finished
run's incremental classifier, against images far from every class.

    .venv/bin/python benchmarks/refit_detector.py [RUN_DIR (default runs/demo)] [--images N]

For every scorer (and the open-set stage's own kind) the incremental stage's `refit_detector`
is run on a copy of RUN_DIR; printed per kind: the share of the test images of learned classes it
keeps (`known_kept`), the share of the test images of classes the run did not learn it flags
(where there are any), and the share it flags of N images of uniform noise and of N flat
(one-colour) images, read through `predict` like a person's files. Nothing reads the pool's truth.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from uniframework.incremental.detector import refit_detector
from uniframework.incremental.tasks import plan_from_discover
from uniframework.openset.stage import ScorerName
from uniframework.predict import predict
from uniframework.rundir import open_run


def far_images(folder: Path, n: int, size: int = 32) -> None:
    """`n` uniform-noise and `n` flat colour PNGs under `folder`/noise and `folder`/flat."""
    rng = np.random.default_rng(0)
    for kind in ("noise", "flat"):
        (folder / kind).mkdir(parents=True)
    for i in range(n):
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / "noise" / f"{i}.png")
        flat = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3))
        Image.fromarray(np.ascontiguousarray(flat)).save(folder / "flat" / f"{i}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, default=Path("runs/demo"))
    p.add_argument("--images", type=int, default=100)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(args.run_dir, run_dir)
        far_images(Path(tmp), args.images)
        ctx, _ = open_run(run_dir)
        model, _ = ctx.load_classifier("incremental")
        plan = plan_from_discover(ctx.data, run_dir / "discover" / "discovered.json")
        print(f"run {args.run_dir}: {plan.num_classes} learned classes")
        print(f"{'detector':<22}{'known_kept':>11}{'unlearned':>11}{'noise':>8}{'flat':>8}")
        for kind in ["openset", *ScorerName.__args__]:
            m = refit_detector(ctx, model, plan, kind)
            shares = []
            for sub in ("noise", "flat"):
                rows = predict(run_dir, [Path(tmp) / sub])
                shares.append(np.mean([r["is_unknown"] for r in rows]))
            name = f"{kind} (energy_weibull)" if kind == "openset" else kind
            caught = m.get("detector_unknown_caught", float("nan"))
            print(
                f"{name:<22}{m['detector_known_kept']:>11.3f}{caught:>11.3f}"
                f"{shares[0]:>8.2f}{shares[1]:>8.2f}"
            )


if __name__ == "__main__":
    main()
