"""The `discover` stage: find the novel classes in the unlabelled pool.

Which images (option `pool`):
- `novel`: the pool's images of novel classes (the novel-class-discovery protocol, where the
  unlabelled set is known to hold only new classes; the filter uses the split's truth);
- `detected`: the pool images the open-set stage's detector (`openset/detector.json`, any
  scorer with its decision rule) flags as unknown (the open-world protocol; no truth used);
- `all`: every unlabelled image, each assigned to a known class or a new cluster
  (Generalized Category Discovery, Vaze et al. CVPR 2022: the pool mixes known and novel).
With `join_pool` (a `detected` pool), once the new groups are trained, every other unlabelled
image whose best output over the known and new classes is a new one (UNO's task-agnostic
read-out, one argmax over both heads), by more than the new-over-known margin that keeps
`join_keep` (95%) of the held-out knowns, joins that group (`_join`): the detector keeps 95%
of the known images, so it passes only the surest new ones, and the groups trained on them can
claim more.
`join_rounds` > 1: the groups train again (`max_epochs`) on the widened pool before each
further round (`checkpoints/discover_join<r>`).
How many novel classes (option `num_novel`): a number, `null` = the split's true count (given),
or `auto` = estimated (`estimator`: `gcd` = `clustering.estimate_num_classes`, GCD's Brent
search on the labelled images' clustering accuracy; `dtc` = `clustering.estimate_num_novel`;
`silhouette` = `clustering.estimate_by_silhouette`, on the unknown pool images alone),
reported as `num_novel_est` beside the truth `num_novel_true`. Which features the estimator
reads (`estimate_on`): `supervised` (the supervised model's, or GCD's fine-tuned ones), or
`overclustered`: the method (OpenMix / Sinkhorn) is first trained for `estimate_epochs` with
`max_novel` novel outputs, a deliberate over-count, and the count is estimated on that model's
features; training then goes on from it with the estimated count (novel head re-seeded by
k-means). A network trained only on the known classes folds the novel ones together (on the
supervised features every criterion sees ~2 novel clusters where there are 5, BENCHMARKS.md);
a few epochs of self-labelling with room for too many classes pull them apart first.
`heads` (ours): the same first training, with one extra Sinkhorn head per candidate count
c = 2..max_novel beside it (`DiscoverModule.add_count_heads`, each trained by swapped
prediction and forced to share the pool equally among its c outputs). The count is read from
the heads' partitions of the pool by two criteria that fail in opposite ways
(`clustering.count_by_consensus`; `estimator` is not used): the silhouette of each partition
after k-means refines it (a head's balanced partition lags the features), which merges two
close classes, and the spectral gap at c on a k-nearest-neighbour graph of the features, which
splits a class with two modes; the best sum of their ranks wins (BENCHMARKS.md "The class
count").
Training then goes on with the chosen head as the novel head (`novel_head_from`): it is a
trained head of the estimated size, so the `max_epochs` after the count can be few.
Methods (option `method`): `openmix` (OpenMix), `kmeans`, `sinkhorn` (UNO-style head),
`sskmeans` (GCD's semi-supervised k-means: labelled images keep their class), `gcd` (GCD:
contrastive fine-tuning on labelled + pool images first (`gcd.py`), then the class count and
semi-supervised k-means on the fine-tuned features).

Writes `discover/discovered.json` (the grouped pool images' indices, their labels k..k+n-1, the
names `new-1..new-n`, numbered by size, largest first, never a true class; `mapping`, the
match of each group to a true class, is evaluation only) for `incremental` and `predict`;
`discover/groups.csv` (each pool image -> its group and confidence), `discover/features.safetensors`
(the grouped images' features, for splitting a group on the label page),
`checkpoints/discover.safetensors` (the classifier over known + novel outputs);
`discover/embedding.png`.
Metrics without truth: `unlabelled_images`, `pool_size`, `pool_flagged_share`, `pool_joined`,
`pool_new_share`, `num_novel(_est)`, the count criteria `count_score_c` / `count_gap_c`, and per
group `group_<j>_size|confidence|silhouette` (silhouette on the final model's features).
Evaluation, each only where its truth exists:
`novel_acc|nmi|ari` on the pool's truly-novel images and `gcd_all_acc|gcd_old_acc|gcd_new_acc`
(GCD's v2 accuracy over every unlabelled image: images outside a `novel` / `detected` pool keep
the supervised model's known class), the pool's make-up `unlabelled_known|novel|novel_share`
(benchmarks: the split's hidden classes), `joined_novel_fraction` (`join_pool`);
`test_novel_acc|nmi|ari` on the test set's novel
classes (novel outputs only), `known_acc` (the test set, also a person's test/ folder).
A person's own folders (no truth): `pool` defaults to `detected` and `num_novel` to `auto`;
`pool: novel` and `num_novel: null` are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only

from ..data.splits import UNKNOWN
from ..errors import UserError
from ..io import save_weights, write_json
from ..models import Classifier, grow_head, shrink_head
from ..registry import STAGES
from ..training import extract, fit, from_rank_zero, make_trainer, process_count
from .clustering import (
    assign,
    count_by_consensus,
    estimate_by_silhouette,
    estimate_num_classes,
    estimate_num_novel,
    head_partitions,
    kmeans,
    semi_supervised_kmeans,
)
from .gcd import centre_head
from .groups import evaluate, group_diagnostics, order_by_size, write_groups
from .labels import cluster_name
from .options import TRAINED, DiscoverOptions

log = logging.getLogger(__name__)


@STAGES.register("discover")
class DiscoverStage:
    """Novel class discovery on the supervised model: OpenMix, k-means or a Sinkhorn head."""

    Options = DiscoverOptions

    @staticmethod
    def run(ctx, opts: DiscoverOptions) -> dict[str, float]:
        """Select the pool -> count -> train -> assign -> evaluate -> save; {} on ranks > 0."""
        data, k = ctx.data, ctx.data.split.num_known
        opts = options_for(opts, data)
        if opts.join_rounds > 1 and process_count(ctx.cfg.trainer) > 1:
            raise UserError(  # the further rounds train on rank 0 alone, after the other ranks
                "stages.discover.join_rounds > 1 trains on one process: set trainer.devices=1, "
                "or join_rounds: 1"
            )
        supervised, pool_all, keep, metrics = _select(ctx, opts, k)
        pool = {key: v[keep] for key, v in pool_all.items()}
        counted = _count(ctx, opts, supervised, pool, k, metrics)
        trained = _train_groups(ctx, opts, supervised, pool, k, counted)
        if trained is None or rank_zero_only.rank != 0:
            return {}
        model, n = trained.model, trained.n
        if opts.join_pool:
            keep, pool = _join_rounds(ctx, opts, model, pool_all, keep, k, metrics)
        groups = _assign(ctx, opts, trained, pool, k)
        metrics.update(
            group_diagnostics(groups.final["features"], groups.pool_pred, groups.confidence, k, n)
        )
        write_groups(ctx, data, pool["index"].numpy(), groups.pool_pred, groups.confidence, k)
        metrics.update(
            evaluate(data, pool_all, keep, groups.pool_pred, groups.test, groups.test_pred, k)
        )
        _save(ctx, opts, model, pool, groups, metrics.pop("mapping"), k, n)
        new = groups.pool_pred >= k
        log.info(
            "discover: %s found %d new groups in %d of %d unlabelled images (sizes %s)%s",
            opts.method,
            n,
            int(new.sum()),
            len(keep),
            [metrics[f"group_{j + 1}_size"] for j in range(n)],
            f"; novel acc {metrics['novel_acc']:.4f} (pool)" if "novel_acc" in metrics else "",
        )
        return metrics


def _select(ctx, opts: DiscoverOptions, k: int):
    """(supervised model, its outputs over every unlabelled image, the pool mask `[U]`, the
    pool's metrics): the images `opts.pool` selects, refused when fewer than 2."""
    data, split = ctx.data, ctx.data.split
    if not data.user_mode and not split.novel:
        raise UserError(
            "the discover stage needs novel classes: set data.num_known below the "
            f"{split.num_classes} classes of the dataset"
        )
    supervised, _ = ctx.load_classifier("supervised")
    pool_all = extract(supervised, data.loader(data.view("unlabelled")))
    # the pool's hidden classes, for evaluation only (None for a person's own pool)
    truth = data.pool_truth(pool_all["index"].numpy())
    keep = select_pool(ctx, opts, pool_all, truth, k)
    if keep.sum() < 2:
        raise UserError(
            f"stages.discover: only {int(keep.sum())} of {len(keep)} unlabelled images to "
            "discover from: use pool: all, or an openset detector that flags more unknowns "
            "(e.g. stages.openset.detector=energy_weibull)"
        )
    metrics: dict[str, float] = {
        "pool_size": int(keep.sum()),
        "pool_flagged_share": float(keep.float().mean()),  # truth-free
        "unlabelled_images": len(keep),
    }
    if truth is not None:  # evaluation
        metrics["pool_novel_fraction"] = float((truth[keep.numpy()] >= k).mean())
        metrics["num_novel_true"] = len(split.novel)
        metrics.update(data.pool_makeup())
    return supervised, pool_all, keep, metrics


@dataclass
class Counted:
    """What counting leaves for training: the model so far (GCD's fine-tuned one, or the
    counting run's), the count `n`, the counting run's module (`heads`: its count heads), the
    labelled images' outputs (estimators and semi-supervised k-means read them)."""

    model: Classifier
    n: int
    probe: object | None = None
    labelled: dict | None = None


def _count(ctx, opts: DiscoverOptions, supervised, pool: dict, k: int, metrics) -> Counted:
    """The representation the count reads (GCD's fine-tuning, or the counting run of
    `estimate_on`), then the count `n` (given, the truth, or estimated); `pool["features"]`
    follow the model. Every rank returns it (under DDP, with rank 0's count)."""
    data = ctx.data
    n = opts.num_novel if isinstance(opts.num_novel, int) else len(data.split.novel)
    model, probe = supervised, None
    if opts.method == "gcd":  # learn the representation first; it needs no class count
        model = shrink_head(supervised, k)  # (every rank goes on to the count)
        _train(ctx, opts, model, k, pool["index"].numpy(), every_rank=True)
        pool["features"] = extract(model, data.loader(_pool_view(data, pool["index"])))["features"]
    auto = opts.num_novel == "auto"
    heads = auto and opts.estimate_on == "heads"
    if auto and opts.estimate_on != "supervised":  # method and max_novel: the options
        model, probe = _counting_run(ctx, opts, supervised, pool, k, heads)  # (every rank)
    labelled = None  # (from the over-counting model when there is one)
    if (auto and not heads) or opts.method in ("sskmeans", "gcd"):
        labelled = extract(model, data.loader(data.view("labelled")))
    if auto:  # under DDP every rank goes on with the count rank 0 chose
        n = from_rank_zero(lambda: _estimate(ctx, opts, pool, labelled, probe, metrics))
    metrics["num_novel"] = n
    return Counted(model, n, probe, labelled)


def _counting_run(ctx, opts: DiscoverOptions, supervised, pool: dict, k: int, heads: bool):
    """OpenMix / Sinkhorn trained for `estimate_epochs` with `max_novel` novel outputs from
    k-means centroids (+ one count head per c = 2..max_novel with `heads`): (model, module) on
    every rank (DDP left them alike), so every rank trains on from the chosen count.
    `pool["features"]` become that model's."""
    if len(pool["index"]) <= opts.max_novel:
        raise UserError(
            f"stages.discover.estimate_on = {opts.estimate_on} first splits the pool into "
            f"max_novel = {opts.max_novel} clusters, but the pool holds only "
            f"{len(pool['index'])} images: lower max_novel, or use pool: all / novel"
        )
    km = kmeans(pool["features"], opts.max_novel, seed=ctx.cfg.seed)
    centres = torch.from_numpy(km.cluster_centers_).float()
    model = novel_head(supervised, k, opts.max_novel, centres)
    index = pool["index"].numpy()
    head_counts = range(2, opts.max_novel + 1) if heads else None
    probe = _train(
        ctx, opts, model, k, index, opts.estimate_epochs, "discover_estimate", head_counts, True
    )
    pool["features"] = extract(model, ctx.data.loader(_pool_view(ctx.data, index)))["features"]
    return model, probe


def _estimate(ctx, opts: DiscoverOptions, pool: dict, labelled, probe, metrics) -> int:
    """The estimated count (`estimate_on: heads`: the count heads' consensus, else
    `estimator`); its scores into `metrics` and `discover/count.png`."""
    data, split, seed = ctx.data, ctx.data.split, ctx.cfg.seed
    counts = range(1, opts.max_novel + 1)
    tol = {} if opts.estimate_tolerance is None else {"tolerance": opts.estimate_tolerance}
    args = (labelled["features"], labelled["labels"], pool["features"]) if labelled else ()
    gaps = None
    if probe is not None and opts.estimate_on == "heads":  # refined partitions + spectral gap
        partitions = head_partitions(pool["features"], probe.count_heads)
        n, scores, gaps = count_by_consensus(pool["features"], partitions, seed)
    elif opts.estimator == "gcd":
        n, scores = estimate_num_classes(*args, opts.max_novel, seed, **tol)
    elif opts.estimator == "dtc":
        n, scores = estimate_num_novel(*args, counts, seed=seed)
    else:
        n, scores = estimate_by_silhouette(pool["features"], counts, seed, **tol)
    metrics["num_novel_est"] = n
    if opts.figures and rank_zero_only.rank == 0:
        from .figures import count_figure

        true_count = None if data.user_mode else len(split.novel)
        extra = None if gaps is None else {"spectral gap": gaps}
        count_figure(scores, n, true_count, ctx.run_dir / "discover" / "count.png", extra)
        metrics.update({f"count_score_{c}": float(v) for c, v in scores.items()})
        if gaps is not None:
            metrics.update({f"count_gap_{c}": float(v) for c, v in gaps.items()})
    log.info(
        "discover: %d novel classes estimated (%s; %s scores %s%s)",
        n,
        "no truth" if data.user_mode else f"truth {len(split.novel)}",
        "count heads' refined silhouette" if gaps is not None else opts.estimator,
        _rounded(scores),
        "" if gaps is None else f", spectral gaps {_rounded(gaps)}",
    )
    return n


@dataclass
class Trained:
    """The classifier over k known + n new outputs; `km` the k-means its new rows started
    from (`kmeans` groups by it), `pool_pred` the semi-supervised k-means assignment of the
    pool (`sskmeans`, `gcd`)."""

    model: Classifier
    n: int
    km: object | None = None
    pool_pred: np.ndarray | None = None


def _train_groups(
    ctx, opts: DiscoverOptions, supervised, pool: dict, k: int, counted: Counted
) -> Trained | None:
    """The classifier over k known + n new outputs, trained where the method trains; None on
    ranks > 0."""
    model, n, probe, labelled = counted.model, counted.n, counted.probe, counted.labelled
    km = pool_pred = None
    if opts.method in ("sskmeans", "gcd"):
        pool_pred, centres = semi_supervised_kmeans(
            labelled["features"], labelled["labels"], pool["features"], k + n, ctx.cfg.seed
        )
        if opts.method == "gcd":  # the fine-tuned features moved: every row a centre
            centre_head(model, torch.from_numpy(centres).float())
        else:
            model = novel_head(supervised, k, n, torch.from_numpy(centres[k:]).float())
    elif probe is not None and opts.estimate_on == "heads":  # the chosen count head, trained
        chosen = next(h for h in probe.count_heads if h.out_features == n)
        model = novel_head_from(model, k, chosen)
    else:  # (overclustered: from the over-counting model, on its features)
        km = kmeans(pool["features"], n, seed=ctx.cfg.seed)
        model = novel_head(model, k, n, torch.from_numpy(km.cluster_centers_).float())
    trains = opts.method in TRAINED
    if trains and _train(ctx, opts, model, k, pool["index"].numpy()) is None:
        return None
    return Trained(model, n, km, pool_pred)


def _join_rounds(ctx, opts, model: Classifier, pool_all: dict, keep: torch.Tensor, k, metrics):
    """`join_pool`: `join_rounds` rounds of `_join`, the groups trained again (`max_epochs`) on
    the widened pool before each round after the first; (widened keep [U], the pool's entries
    of `pool_all`). Metrics: `pool_joined`, `pool_size` (flagged + joined); on a benchmark
    split also the widened pool's novel fraction and `joined_novel_fraction` (evaluation)."""
    flagged, pool = keep, None
    for r in range(opts.join_rounds):
        if r:  # (rank 0 only, like the rest of the stage after the groups' training)
            index = pool_all["index"][keep].numpy()  # dataset indices of the widened pool
            _train(ctx, opts, model, k, index, name=f"discover_join{r}")
        keep, pool = _join(ctx, model, pool_all, keep, k, opts.join_keep)
    joins = (keep & ~flagged).nonzero().squeeze(1)
    metrics.update(pool_joined=len(joins), pool_size=int(keep.sum()))
    truth = ctx.data.pool_truth(pool_all["index"].numpy())
    if truth is not None:  # evaluation
        metrics["pool_novel_fraction"] = float((truth[keep.numpy()] >= k).mean())
        if len(joins):
            metrics["joined_novel_fraction"] = float((truth[joins.numpy()] >= k).mean())
    return keep, pool


def _join(ctx, model: Classifier, pool_all: dict, keep: torch.Tensor, k: int, kept: float):
    """One round of `join_pool`: the unlabelled images outside the pool that the trained
    `model` gives to a new class join the pool: one argmax over known + new outputs (UNO's
    task-agnostic read-out), with the new-over-known margin above the one that keeps a `kept`
    share of the held-out known images (`val`) with the known classes (at least 0: the
    argmax). (widened keep [U], the pool's entries of `pool_all`)."""
    from ..openset.detector import known_threshold

    data, rest = ctx.data, (~keep).nonzero().squeeze(1)
    val = extract(model, data.loader(data.view("val")))["logits"]
    if len(val) == 0:
        raise UserError(
            "stages.discover.join_pool sets its margin on the held-out labelled images, and "
            "there are none: raise data.val_fraction, or set join_pool: false"
        )
    bar = max(known_threshold(new_margin(val, k), kept), 0.0)  # 0: the argmax is a new class
    joins = rest[:0]
    if len(rest):
        out = extract(model, data.loader(_pool_view(data, pool_all["index"][rest].numpy())))
        joins = rest[new_margin(out["logits"], k) > bar]
    keep = keep.clone()
    keep[joins] = True
    log.info(
        "discover: %d more unlabelled images join a new group (join_pool; margin > %.3f)",
        len(joins),
        bar,
    )
    return keep, {key: v[keep] for key, v in pool_all.items()}


def new_margin(logits: torch.Tensor, k: int) -> torch.Tensor:
    """[N]: the best new-class logit minus the best known one (`logits` [N, k + n]); > 0 where
    the joint argmax is a new class."""
    return logits[:, k:].max(1).values - logits[:, :k].max(1).values


@dataclass
class Groups:
    """Where every pool image and every new-class test image went: `pool_pred [P]` (0..k-1 a
    known class, k.. a new group, numbered by size), `confidence [P]`, the test outputs (None
    without test images) and `test_pred` (new group 0.. of each novel test image), and the
    final model's pool outputs `final`."""

    pool_pred: np.ndarray
    confidence: np.ndarray
    test: dict | None
    test_pred: np.ndarray
    final: dict


def _assign(ctx, opts: DiscoverOptions, trained: Trained, pool: dict, k: int) -> Groups:
    """Each pool image to a group (a known class too with `pool: all`), each novel test image
    to a new group; the groups renumbered by size (new-1 = the largest)."""
    data, model, n = ctx.data, trained.model, trained.n
    final = extract(model, data.loader(_pool_view(data, pool["index"].numpy())))
    pool_logits = final["logits"]
    has_test = len(data.split.test) > 0  # a person's folders may have no test/
    test = extract(model, data.loader(data.view("test"))) if has_test else None
    novel_test = test["labels"] >= k if has_test else torch.zeros(0, dtype=torch.bool)
    if opts.method == "kmeans":  # nearest centroid of the supervised features
        pool_pred = trained.km.labels_ + k
        test_pred = assign(trained.km, test["features"][novel_test]) if novel_test.any() else []
    else:
        if opts.method in ("sskmeans", "gcd"):  # the semi-supervised k-means assignment
            pool_pred = trained.pool_pred
        else:  # a pool of unknowns (novel / detected) is split among the new classes; a
            # mixed pool (all) may also go to the known ones
            pool_pred = (
                pool_logits.argmax(1).numpy()
                if opts.pool == "all"
                else pool_logits[:, k:].argmax(1).numpy() + k
            )
        # test images: the head's novel outputs
        test_pred = test["logits"][novel_test][:, k:].argmax(1).numpy() if has_test else []
    rank = order_by_size(model, k, n, pool_pred)  # new-1 = the largest group
    pool_pred = np.where(pool_pred >= k, rank[np.maximum(pool_pred - k, 0)] + k, pool_pred)
    test_pred = rank[np.asarray(test_pred, np.int64)]
    confidence = pool_logits.softmax(1).max(1).values.numpy()  # (order-free)
    return Groups(pool_pred, confidence, test, test_pred, final)


def _save(ctx, opts, model, pool: dict, groups: Groups, mapping: dict, k: int, n: int) -> None:
    """`discovered.json` (+ the files of own folders), `features.safetensors`, the classifier
    and the embedding figure."""
    data, new = ctx.data, groups.pool_pred >= k  # the images given to a new class
    discovered = {
        "method": opts.method,
        "num_known": k,
        "num_novel": n,
        "index": pool["index"][torch.from_numpy(new)].tolist(),
        "label": groups.pool_pred[new].tolist(),
        # evaluation only: cluster -> true class (benchmark: on the pool; own data: on the
        # test folder's new classes, when it has them)
        "mapping": {str(k + j): mapping.get(k + j) for j in range(n)},
        "class_names": [cluster_name(k + j, k) for j in range(n)],
    }
    paths = getattr(data.train, "paths", None)  # own folders: each grouped image's file
    if paths is not None:
        discovered["paths"] = [str(paths[i]) for i in discovered["index"]]
    write_json(ctx.run_dir / "discover" / "discovered.json", discovered)
    grouped, final = torch.from_numpy(new), groups.final
    # the final model's features of the grouped images, so the label page can split a
    # group without loading a model: [len(discovered index), D], in discovered's order
    save_weights(
        ctx.run_dir / "discover" / "features.safetensors",
        {"index": final["index"][grouped], "features": final["features"][grouped]},
        {"num_known": k, "num_novel": n},
    )
    ctx.save_model("discover", model, num_known=k, num_novel=n)
    if opts.figures and groups.test is not None:
        from .figures import embedding_figure

        test = groups.test
        embedding_figure(
            test["features"],
            test["labels"],
            (test["labels"] >= k).numpy(),
            groups.test_pred + k,
            k,
            ctx.run_dir / "discover" / "embedding.png",
            seed=ctx.cfg.seed,
        )


def options_for(opts: DiscoverOptions, data) -> DiscoverOptions:
    """The options a run on `data` uses. A person's own pool (no truth): `pool` defaults to
    `detected` and `num_novel` to `auto`; the options that need the pool's classes are refused
    (UserError naming the key and the fix). A benchmark keeps the options as given."""
    if not data.user_mode:
        return _check_join(opts)
    given = opts.model_fields_set
    if opts.pool == "novel" and "pool" in given:
        raise UserError(
            "stages.discover.pool = novel selects the unlabelled images by their hidden classes, "
            "which an unlabelled folder does not have: use pool: detected (the images the "
            "openset detector flags) or pool: all"
        )
    if "num_novel" in given and opts.num_novel is None:
        raise UserError(
            "stages.discover.num_novel = null means the true number of new classes, which "
            "nobody knows for an unlabelled folder: leave it out (= auto, estimated), set auto, "
            "or give a number"
        )
    update = {k: v for k, v in (("pool", "detected"), ("num_novel", "auto")) if k not in given}
    return _check_join(opts.model_copy(update=update))


def _check_join(opts: DiscoverOptions) -> DiscoverOptions:
    """`join_pool` widens a detected pool (the pool is settled here: own folders default to
    `detected`), else a UserError."""
    if opts.join_pool and opts.pool != "detected":
        raise UserError(
            f"stages.discover.join_pool widens a detected pool, but pool = {opts.pool}: set "
            "pool: detected, or join_pool: false"
        )
    return opts


def select_pool(ctx, opts, pool: dict, truth: np.ndarray | None, k: int) -> torch.Tensor:
    """[P] bool: the pool images to discover from (see the module docstring); `truth` (the
    pool's hidden classes) serves `pool: novel` only, the benchmark protocol."""
    if opts.pool == "novel":
        if truth is None:  # (options_for refuses it before)
            raise UserError("stages.discover.pool = novel needs the pool's classes")
        return torch.from_numpy(truth >= k)
    if opts.pool == "all":
        return torch.ones(len(pool["index"]), dtype=torch.bool)
    from ..openset.detector import Detector

    detector = Detector.load(ctx.run_dir / "openset")
    if detector is None:
        raise UserError(
            "stages.discover.pool = detected needs the open-set detector "
            f"{ctx.run_dir / 'openset' / 'detector.json'}: put an `openset` stage before "
            "`discover`, or use pool: novel"
        )
    return detector.predict_unknown(pool["features"], pool["logits"]).cpu()


def novel_head(model: Classifier, k: int, n: int, centroids: torch.Tensor) -> Classifier:
    """`model` (in place) with k known + n novel outputs: known rows kept (an extra "unknown"
    output dropped), novel rows = the normalised centroids [n, D] scaled to the known rows'
    mean norm, novel biases = the known biases' mean."""
    grow_head(shrink_head(model, k), n)
    with torch.no_grad():
        w, b = model.head.weight[:k], model.head.bias[:k]
        model.head.weight[k:] = F.normalize(centroids, dim=1) * w.norm(dim=1).mean()
        model.head.bias[k:] = b.mean()
    return model


def novel_head_from(model: Classifier, k: int, head: torch.nn.Linear) -> Classifier:
    """`model` (in place) with its k known outputs and, as its n novel outputs, the rows and
    biases of a trained count `head` (n outputs): that head was trained beside the known
    logits ([known | head] logits, `DiscoverModule.swapped_head_loss`), so its scale already
    fits theirs."""
    grow_head(shrink_head(model, k), head.out_features)
    with torch.no_grad():
        model.head.weight[k:] = head.weight
        model.head.bias[k:] = head.bias
    return model


def _rounded(scores: dict[int, float]) -> dict[int, float]:
    return {c: round(v, 3) for c, v in scores.items()}


def _pool_view(data, index, train: bool = False):
    """View of the chosen pool images (dataset indices, in this order), labels hidden;
    `train` adds the training augmentation."""
    index = np.asarray(index, np.int64)
    return data.subset_view(index, np.full(len(index), UNKNOWN), train)


def _train(
    ctx,
    opts,
    model: Classifier,
    k: int,
    pool_index,
    epochs=None,
    name="discover",
    counts=None,
    every_rank=False,
):
    """Train OpenMix, the Sinkhorn head or GCD on Lightning (`epochs`: None = the stage's
    max_epochs; checkpoints under `checkpoints/<name>`; `counts`: a count head per candidate
    count beside it); the trained module, or None on ranks other than 0 (unless
    `every_rank`)."""
    from .gcd import GCDModule
    from .openmix import OpenMixModule
    from .uno import UNOModule, two_views

    data, cfg = ctx.data, ctx.cfg
    pool_train = _pool_view(data, pool_index, train=True)
    labelled = data.view("labelled", train=True)
    learner = {"openmix": OpenMixModule, "gcd": GCDModule}.get(opts.method, UNOModule)
    module = learner(model, opts, k)
    if counts:
        module.add_count_heads(counts)
    labelled, pool_train = two_views(labelled), two_views(pool_train)
    train = {
        "labelled": data.loader(labelled, train=True),
        "pool": data.loader(pool_train, train=True),
    }
    trainer = make_trainer(cfg.trainer, ctx.run_dir, name, epochs or opts.max_epochs)
    log.info("discover: %s on %d pool images", opts.method, len(pool_index))
    fit(trainer, module, train, None)
    return module if trainer.is_global_zero or every_rank else None
