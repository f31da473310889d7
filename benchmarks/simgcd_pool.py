"""What SimGCD's prototypes (`stages.supervised.simgcd_weight`) make of the unlabelled photos of
a run on own folders, read from the supervised stage's files.

    .venv/bin/python benchmarks/simgcd_pool.py RUN_DIR [--known airplane,automobile,...]

Each unlabelled photo goes to its nearest prototype (cosine on the supervised features, as the
stage trained them). Printed without truth: the share of the photos on the new prototypes and
each prototype's share. Then, for evaluation only (the class folder each link points to, as
`pool_accuracy.py`): GCD's one-map accuracy of those assignments (all / old / new), and per
class the share of its photos on a new prototype (a known class should stay low, a new one
high) and how often the supervised classifier calls it each known class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pick_detector import known_names, link_truth, open_own_run  # (benchmarks/)

from uniframework.discover.metrics import gcd_accuracy
from uniframework.io import load_weights
from uniframework.training import extract


def main() -> None:
    args, ctx = open_own_run(__doc__)
    data, k = ctx.data, ctx.data.split.num_known
    names = known_names(args, ctx)
    state, _ = load_weights(args.run_dir / "checkpoints" / "supervised_simgcd.safetensors")
    pool = extract(ctx.load_classifier("supervised")[0], data.loader(data.view("unlabelled")))
    cosine = F.normalize(pool["features"], dim=1) @ F.normalize(state["prototypes"], dim=1).T
    pred = cosine.argmax(1).numpy()  # [P]: 0..k-1 known prototypes, then the new ones
    share = np.bincount(pred, minlength=cosine.shape[1]) / len(pred)
    new = cosine.shape[1] - k
    print(f"run {args.run_dir}: {len(pred)} unlabelled photos, {new} new prototypes")
    print(f"on a new prototype (truth-free): {(pred >= k).mean():.3f}")
    print("per prototype: " + " ".join(f"{s:.3f}" for s in share))
    truth, order = link_truth(data, pool["index"].numpy(), names)
    acc = gcd_accuracy(truth, pred, k)
    print(f"GCD accuracy (eval.): all {acc['all']:.3f}  old {acc['old']:.3f}  new {acc['new']:.3f}")
    known = pool["logits"][:, :k].argmax(1).numpy()
    print(f"{'class':<12}{'on new':>8}  supervised classifier's call: " + " ".join(names))
    for c, name in enumerate(order):
        mine = truth == c
        if not mine.any():  # a known class with no unlabelled photo
            continue
        calls = np.bincount(known[mine], minlength=k) / mine.sum()
        row = " ".join(f"{v:.2f}" for v in calls)
        print(f"{name:<12}{(pred[mine] >= k).mean():>8.3f}  {row}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
