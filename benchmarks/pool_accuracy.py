"""GCD's accuracy over every unlabelled photo of a run on own folders, from the run's files and
the folder each unlabelled link points to (evaluation only: the run never reads it).

    .venv/bin/python benchmarks/pool_accuracy.py RUN_DIR [--known airplane,automobile,...]

For folders laid out by `own_folders.py` (or any whose unlabelled files are links into class
folders). Printed, each as GCD's one Hungarian map over all classes, then split by old / new
class (Vaze et al. 2022, `discover.metrics.gcd_accuracy`):
- `discover`: each photo of discover's pool in its group (`discover/groups.csv`), every other
  photo in the supervised classifier's known class (the stage's own `gcd_*_acc` on a benchmark
  split);
- `learned`: the final (incremental) classifier's class of every unlabelled photo;
the share of the new photos that reach a new group (`new caught`), and the share of new photos
among those the detector flagged and among those that joined (`join_pool`).
"""

from __future__ import annotations

import csv

from pick_detector import known_names, link_truth, open_own_run  # (benchmarks/)

from uniframework.discover.metrics import gcd_accuracy
from uniframework.openset.detector import Detector
from uniframework.training import extract


def main() -> None:
    args, ctx = open_own_run(__doc__)
    data, k = ctx.data, ctx.data.split.num_known
    names = known_names(args, ctx)
    view = data.view("unlabelled")
    index = extract(ctx.load_classifier("supervised")[0], data.loader(view))
    paths = [str(data.train.paths[i]) for i in index["index"].numpy()]
    truth, _ = link_truth(data, index["index"].numpy(), names)
    # discover: the pool's groups, the rest in the supervised model's known class
    pred = index["logits"][:, :k].argmax(1).numpy()
    with open(args.run_dir / "discover" / "groups.csv") as f:
        group = {row["image"]: row["group"] for row in csv.DictReader(f)}
    for i, f in enumerate(paths):
        g = group.get(f)
        if g is not None:
            pred[i] = names.index(g) if g in names else k + int(g.split("-")[1]) - 1
    caught = (pred[truth >= k] >= k).mean()
    print(f"run {args.run_dir}: {len(truth)} unlabelled photos, {(truth >= k).mean():.3f} new")
    detector = Detector.load(args.run_dir / "openset")
    if detector is None:
        raise SystemExit(f"{args.run_dir} has no openset/detector.json")
    flagged = detector.predict_unknown(index["features"], index["logits"][:, :k]).cpu().numpy()
    joined = (pred >= k) & ~flagged
    for name, mask in (("flagged by the detector", flagged), ("joined", joined)):
        if mask.any():
            print(f"{name}: {mask.sum()} photos, {(truth[mask] >= k).mean():.3f} new")
    learned = extract(ctx.load_classifier("incremental")[0], data.loader(view))["logits"]
    print(f"new caught (in a new group): {caught:.3f}")
    for name, p_ in (("discover", pred), ("learned", learned.argmax(1).numpy())):
        acc = gcd_accuracy(truth, p_, k)
        print(f"{name:<9} GCD all {acc['all']:.3f}  old {acc['old']:.3f}  new {acc['new']:.3f}")


if __name__ == "__main__":
    main()
