"""Whether `detector: auto` picks the unknown detector a person would want: per scorer, the
truth-free share of the unlabelled pool it flags against its test AUROC.

    .venv/bin/python benchmarks/pick_detector.py RUN_DIR [--known airplane,automobile,...]

On RUN_DIR's supervised classifier every scorer of the open-set stage is fitted as the stage
fits it (`openset.stage.fit_detectors`); printed per scorer: the share of the unlabelled pool
above its threshold that keeps 95% of the held-out knowns (`pool_flagged`, what `auto` picks by;
no truth read), then, for evaluation only, the share of the pool's new and known images it
flags and its test AUROC. The pool's truth: the benchmark split's, or, for own folders laid out
by `own_folders.py`, the class folder each unlabelled link points to (`--known` names the known
classes). A good rule ranks the scorers as the AUROC does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from uniframework.openset.metrics import openset_metrics
from uniframework.openset.stage import (
    PARTS,
    OpensetOptions,
    fit_detectors,
    pick_detector,
    pool_flags,
)
from uniframework.rundir import open_run
from uniframework.training import extract

KNOWN = "airplane,automobile,bird,cat,deer"  # own_folders.py's known classes


def pool_is_new(data, index: np.ndarray, known: list[str]) -> torch.Tensor:
    """[P] bool: which pool images are of a new class (evaluation only)."""
    truth = data.pool_truth(index)
    if truth is not None:
        return torch.from_numpy(truth >= data.split.num_known)
    paths = data.train.paths  # own folders: each link's target folder is its class
    return torch.tensor([Path(os.path.realpath(paths[i])).parent.name not in known for i in index])


def link_truth(data, index: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Own folders: the class of each unlabelled photo `index` [P] from its link's target folder
    (evaluation only), numbered as the run's known classes `names`, then the others by name:
    (truth [P], every class name in that order)."""
    where = [Path(os.path.realpath(data.train.paths[i])).parent.name for i in index]
    order = list(names) + sorted(set(where) - set(names))
    return np.array([order.index(c) for c in where]), order


def known_names(args, ctx) -> list[str]:
    """The run's known class names, in its order; a `--known` that differs stops the script."""
    names = list(ctx.data.class_names[: ctx.data.split.num_known])
    if sorted(names) != sorted(args.known.split(",")):
        raise SystemExit(f"the run's known classes are {names}, not --known {args.known}")
    return names


def open_own_run(doc: str):
    """(args, the run's context) from the command line `RUN_DIR [--known ...]` (also
    `pool_accuracy.py`'s)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--known", default=KNOWN)
    args = p.parse_args()
    return args, open_run(args.run_dir)[0]


def main() -> None:
    args, ctx = open_own_run(__doc__)
    data, k = ctx.data, ctx.data.split.num_known
    model, _ = ctx.load_classifier("supervised")
    out = {part: extract(model, data.loader(data.view(part))) for part in PARTS}
    for o in out.values():
        o["logits"] = o["logits"][:, :k]
    train, val, pool, test = (out[part] for part in PARTS)
    opts = dict(ctx.cfg.stage_list()).get("openset") or OpensetOptions()
    fitted, _ = fit_detectors(opts, list(OpensetOptions().scorers), train, val, pool, k)
    best, shares = pick_detector(fitted, val, pool)
    new = pool_is_new(data, pool["index"].numpy(), args.known.split(","))
    is_unknown = test["labels"] >= k
    known_correct = test["logits"].argmax(1) == test["labels"]
    print(f"run {args.run_dir}: pool {len(new)} images, {new.float().mean():.3f} new (truth)")
    print(f"{'scorer':<16}{'pool_flagged':>13}{'new caught':>12}{'known flagged':>15}{'AUROC':>8}")
    for name, det in fitted.items():
        s_test = det.score(test["features"], test["logits"])
        auroc = openset_metrics(s_test, is_unknown, known_correct)["auroc"]
        flag = pool_flags(det, val, pool)
        print(
            f"{name:<16}{shares[name]:>13.3f}{flag[new].float().mean():>12.3f}"
            f"{flag[~new].float().mean():>15.3f}{auroc:>8.3f}"
        )
    print(f"auto picks: {best}")


if __name__ == "__main__":
    main()
