"""`report.html`: one self-contained page a person reads top to bottom after a run.

Sections, in the order of the loop: what ran (the resolved config, seconds per stage, the
metrics grouped by stage), MAE / SimMIM reconstructions (`pretrain/`), the feature embedding
(`discover/embedding.png`), energy histograms with the Weibull fits and ROC curves
(`openset/`), the discovered clusters with sample pool images, incremental accuracy
(`incremental/`), detection (`detect/`), and the final confusion matrix over all classes.
Clusters a person named on the label page (`discover/labels.json`) carry those names, with a
line saying whether the incremental classifier learned them.
A section whose artifacts are missing becomes one line naming the stage that makes them.

Figures drawn here (`report/clusters.png`, `report/confusion.png`) and every other figure are
inlined as base64 PNG data URIs, so the page can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import numpy as np
import torch

from .data.images import read_image, working_short_side
from .discover.labels import (
    LABELS,
    cluster_names,
    describe_labels,
    output_truth,
    read_labels,
    sha256_of,
)
from .errors import UserError
from .io import atomic_write_text, load_weights, read_json, read_meta
from .rundir import RunContext, final_stage, open_run

log = logging.getLogger(__name__)

UNMATCHED = -2  # a discovered class the Hungarian map matched to no true class
UNKNOWN = -1  # ORE's explicit "unknown" output of a supervised classifier
SAMPLES_PER_CLUSTER = 8

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12px; }
figure { display: inline-block; vertical-align: top; margin: .5em 1em .5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
pre.config { columns: 3 18em; column-rule: 1px solid #ddd; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
figcaption, .missing { color: #666; font-size: 13px; }
"""


def has_discovered_outputs(stage: str, meta: dict) -> bool:
    """Whether outputs k.. of `stage`'s classifier are discovered (not true) classes."""
    return stage == "discover" or (stage == "incremental" and meta.get("source") == "discover")


def confusion_counts(ctx: RunContext) -> tuple[np.ndarray, list[str], str] | None:
    """Confusion matrix [L, L] of the final classifier on the test set, its row/column names
    and the stage; None without a classifier. Discovered outputs are mapped to true classes
    through `discovered.json`'s Hungarian `mapping`; one matched to none is "unmatched"."""
    from sklearn.metrics import confusion_matrix

    from .training import extract

    stage = final_stage(ctx)
    if stage is None:
        return None
    model, meta = ctx.load_classifier(stage)
    data = ctx.data
    k, names = data.split.num_known, list(data.class_names)
    with torch.no_grad():
        out = extract(model, data.loader(data.view("test")))
    pred, truth = out["logits"].argmax(1).numpy(), out["labels"].numpy()
    labels = list(range(len(names)))
    if has_discovered_outputs(stage, meta):
        # output -> its true classes (several for clusters merged on the label page)
        if "output_truth" in meta:
            lut = {int(c): ts for c, ts in meta["output_truth"].items()}
        else:
            lut = output_truth(read_json(ctx.run_dir / "discover" / "discovered.json", {}))
        pred = np.array([_as_truth(p, t, k, lut) for p, t in zip(pred, truth, strict=True)])
        labels, names = labels + [UNMATCHED], names + ["unmatched"]
    elif stage == "supervised" and model.num_classes > k:  # ORE's extra "unknown" output
        pred = np.where(pred >= k, UNKNOWN, pred)
        labels, names = labels + [UNKNOWN], names + ["unknown"]
    return confusion_matrix(truth, pred, labels=labels), names, stage


def _as_truth(pred: int, truth: int, k: int, lut: dict[int, list[int]]) -> int:
    """A prediction as a true class: known outputs are; a discovered one is the image's own class
    when it covers it, else its first class (UNMATCHED when it covers none)."""
    if pred < k:
        return int(pred)
    covers = lut.get(int(pred), [])
    return int(truth) if truth in covers else (covers[0] if covers else UNMATCHED)


def confusion_figure(matrix: np.ndarray, names: list[str], title: str, path: Path) -> None:
    """Counts, coloured by the share of each true class's row."""
    from .plotting import plt, save_figure

    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = 2.5 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            color = "white" if rows[i, j] > 0.6 else "black"
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    save_figure(fig, path)


def cluster_figure(
    ctx: RunContext, discovered: dict, path: Path, names: list[str] | None = None
) -> None:
    """One row per discovered class: its name (`names`, else discover's) and size, then up to
    `SAMPLES_PER_CLUSTER` of its pool images (first in index order): what a person needs to
    name it (no true class: a person's own pool has none)."""
    from .plotting import plt, save_figure

    k, n = int(discovered["num_known"]), int(discovered["num_novel"])
    index, label = np.asarray(discovered["index"]), np.asarray(discovered["label"])
    if "paths" in discovered:  # own folders: read the files, never rescan the whole folder
        files = dict(zip(discovered["index"], discovered["paths"]))
        side = working_short_side(ctx.cfg.data.image_size)

        def load(i: int):
            return read_image(files[i], side)
    else:
        load = ctx.data.train.load
    names = names or cluster_names(discovered, None)
    fig, axes = plt.subplots(
        n, SAMPLES_PER_CLUSTER, figsize=(1.0 * SAMPLES_PER_CLUSTER + 1.6, 1.15 * n), squeeze=False
    )
    for j in range(n):
        members = index[label == k + j]
        for col, ax in enumerate(axes[j]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(members):
                ax.imshow(load(int(members[col])).permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[j][0].set_ylabel(
            f"{names[j]}\n{len(members)} images", rotation=0, ha="right", va="center", fontsize=8
        )
    fig.suptitle("discovered classes: sample pool images", fontsize=9)
    save_figure(fig, path)


# --- HTML -------------------------------------------------------------------------------------


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{cap}">'
        f"<figcaption>{cap}</figcaption></figure>"
    )


def _missing(what: str, stage: str) -> str:
    where = f"they come from the <code>{stage}</code> stage"
    return f'<p class="missing">No {what} in this run: {where}.</p>'


def _section(title: str, figures: list[tuple[Path, str]], what: str, stage: str) -> str:
    """A titled section of the figures that exist, or one line naming the stage that makes them."""
    found = [(p, c) for p, c in figures if p.is_file()]
    if not found:
        return _missing(what, stage)
    return f"<h2>{html.escape(title)}</h2>" + "".join(_img(p, c) for p, c in found)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metrics_tables(metrics: dict, stages: list[str]) -> str:
    """Per stage: `stage.metric` keys as one table; `stage.group.metric` keys (per scorer, per
    compared learner) as a group x metric table."""
    out = []
    order = stages + sorted({k.split(".")[0] for k in metrics} - set(stages))
    for stage in order:
        own = {k[len(stage) + 1 :]: v for k, v in metrics.items() if k.startswith(stage + ".")}
        if not own:
            continue
        out.append(f"<div><h3>{html.escape(stage)}</h3>")
        flat = [[k, v] for k, v in own.items() if "." not in k]
        if flat:
            out.append(_table(["metric", "value"], flat))
        grouped: dict[str, dict] = {}
        for key, v in own.items():
            if "." in key:
                group, _, name = key.rpartition(".")
                grouped.setdefault(group, {})[name] = v
        if grouped:
            cols = list(dict.fromkeys(c for g in grouped.values() for c in g))
            rows = [[g, *(vals.get(c, "") for c in cols)] for g, vals in grouped.items()]
            out.append(_table(["", *cols], rows))
        out.append("</div>")
    return f'<div class="tables">{"".join(out)}</div>' if out else ""


def _what_ran(ctx: RunContext, state: dict) -> str:
    names = [name for name, _ in ctx.cfg.stage_list()]
    seconds = state.get("seconds", {})
    rows = [
        [n, seconds.get(n, ""), "done" if n in state.get("done", []) else "not finished"]
        for n in names
    ]
    rows.append(["total", round(sum(seconds.get(n, 0.0) for n in names), 2), ""])
    config = (ctx.run_dir / "config.yaml").read_text()
    metrics = read_json(ctx.run_dir / "metrics.json", {})
    return (
        "<h2>What ran</h2><h3>Stages</h3>"
        + _table(["stage", "seconds", "status"], rows)
        + _start_line(ctx)
        + '<h3>Resolved config (config.yaml)</h3><pre class="config">'
        + html.escape(config)
        + "</pre><h2>Metrics</h2>"
        + (_metrics_tables(metrics, names) or "<p class='missing'>No metrics yet.</p>")
    )


def _start_line(ctx: RunContext) -> str:
    """What the supervised backbone started from (its weights file's record), when known."""
    path = ctx.weights_path("supervised")
    start = read_meta(path).get("start_weights") if path.is_file() else None
    return f"<p>Backbone weights at the start: {html.escape(start)}</p>" if start else ""


def _pretrain_figures(run_dir: Path) -> list[tuple[Path, str]]:
    """The first and last epochs' reconstructions (every epoch would bloat the page), then the
    other pretrain figures (iBOT's per-epoch curves)."""
    folder = run_dir / "pretrain"
    recon = sorted(folder.glob("recon_epoch*.png"))
    chosen = list(dict.fromkeys(recon[:1] + recon[-1:]))
    other = sorted(p for p in folder.glob("*.png") if p not in recon)
    return [(p, f"pretrain: {p.stem.replace('_', ' ')}") for p in chosen + other]


def _pool_line(metrics: dict) -> str:
    """What discovery found, in words and a table of the new groups (all without truth), then
    the pool's make-up and the true count where the run is a benchmark (evaluation)."""
    m = {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("discover.")}
    parts, out = [], ""
    if "unlabelled_images" in m:
        n = int(m.get("num_novel", 0))
        how = "estimated" if "num_novel_est" in m else "given"
        joined = int(m.get("pool_joined", 0))
        parts.append(
            f"{int(m['pool_size']) - joined} of {m['unlabelled_images']} unlabelled images look "
            f"new; we see {n} new kinds ({how})."
            + (f" {joined} more joined a new group once the groups were trained." if joined else "")
        )
        rows = [
            [
                f"new-{j}",
                m.get(f"group_{j}_size", 0),
                m.get(f"group_{j}_confidence", "n/a"),
                m.get(f"group_{j}_silhouette", "n/a"),
            ]
            for j in range(1, n + 1)
        ]
        out = _table(["group", "images", "mean confidence", "silhouette"], rows)
    if "unlabelled_known" in m:
        parts.append(
            f"Evaluation: the unlabelled pool held {m['unlabelled_known']} images of known "
            f"classes + {m['unlabelled_novel']} of novel ones ({m['unlabelled_novel_share']:.0%} "
            f"novel), {m.get('num_novel_true')} novel classes."
        )
    if "test_novel_acc" not in m and "unlabelled_images" in m:
        parts.append(
            "No clustering accuracy: there are no labelled test images of new classes "
            "(a test/ folder with class folders beyond the labelled ones gives one)."
        )
    return (f"<p>{html.escape(' '.join(parts))}</p>" if parts else "") + out


def _labels_note(ctx: RunContext, discovered: dict) -> tuple[list[str] | None, str]:
    """The clusters' names from `discover/labels.json` (None without it) and a paragraph on
    them: what the person named, merged and rejected, and whether the incremental classifier
    learned these labels."""
    path = ctx.run_dir / "discover" / "discovered.json"
    k = int(discovered["num_known"])
    try:
        labels = read_labels(path, ctx.data.class_names[:k])
    except UserError as err:
        return None, f'<p class="missing">{html.escape(str(err))}</p>'
    if labels is None:
        return None, ""
    words = describe_labels(labels, k)
    inc = ctx.weights_path("incremental")
    if inc.is_file():
        used = load_weights(inc)[1].get("labels_sha256")
        if used == sha256_of(path.parent / LABELS):
            words += " The incremental classifier learned these classes."
        else:
            words += (
                " The incremental classifier was trained before these names were saved: "
                "rerun with --restart-from incremental to learn them."
            )
    return cluster_names(discovered, labels), f"<p>{html.escape(words)}</p>"


def _drawn_here(ctx: RunContext) -> str:
    """The clusters and confusion sections, whose figures this module draws from the run."""
    out, run_dir = [], ctx.run_dir
    discovered = read_json(run_dir / "discover" / "discovered.json")
    try:
        if discovered is None:
            out.append(_missing("discovered clusters", "discover"))
        else:
            path = run_dir / "report" / "clusters.png"
            named, note = _labels_note(ctx, discovered)
            cluster_figure(ctx, discovered, path, named)
            caption = f"{discovered['num_novel']} classes found by {discovered['method']}"
            metrics = read_json(run_dir / "metrics.json", {})
            out.append(
                "<h2>Discovered classes</h2>" + _pool_line(metrics) + note + _img(path, caption)
            )
        cm = confusion_counts(ctx)
        if cm is None:
            out.append(_missing("confusion matrix", "supervised"))
        else:
            matrix, names, stage = cm
            acc = float(np.trace(matrix) / max(matrix.sum(), 1))
            path = run_dir / "report" / "confusion.png"
            title = f"final classifier ({stage}) on the test set: accuracy {acc:.3f}"
            confusion_figure(matrix, names, title, path)
            out.append("<h2>Final confusion matrix</h2>" + _img(path, title))
    except UserError as err:  # e.g. the dataset moved since the run: say so, keep the rest
        out.append(
            f'<p class="missing">No figures drawn from the data: {html.escape(str(err))}</p>'
        )
    return "".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write `run_dir/report.html` (and `report/*.png`); returns its path."""
    ctx, state = open_run(run_dir)
    d = ctx.run_dir
    parts = [
        f"<h1>UniFramework run: {html.escape(ctx.cfg.name)}</h1>",
        f"<p>{html.escape(str(d.resolve()))}</p>",
        _what_ran(ctx, state),
        _section(
            "Masked-image-modelling pretraining",
            _pretrain_figures(d),
            "MIM reconstructions",
            "pretrain",
        ),
        _section(
            "Feature embedding",
            [
                (d / "discover" / "embedding.png", "t-SNE: known, unknown and discovered classes"),
                (d / "discover" / "count.png", "the class count: each candidate count's score"),
            ],
            "feature embedding",
            "discover",
        ),
        _section(
            "Unknown detection",
            [
                (d / "openset" / "energy_hist.png", "energy of test images, with Weibull fits"),
                (d / "openset" / "roc.png", "ROC curves of the unknown scorers"),
            ],
            "energy histograms or ROC curves",
            "openset",
        ),
    ]
    classify = final_stage(ctx) is not None or "detect" not in state.get("done", [])
    if classify:  # the data-drawn sections are about classification
        parts.append(_drawn_here(ctx))
    parts.append(
        _section(
            "Incremental learning",
            [
                (d / "incremental" / "accuracy.png", "accuracy on the classes seen, per task"),
                (d / "incremental" / "matrix.png", "accuracy matrix: after task (row) on task"),
            ],
            "incremental accuracy",
            "incremental",
        )
    )
    if (d / "detect").is_dir():
        parts.append(
            _section(
                "Open-world detection",
                [
                    (d / "detect" / "detections.png", "detections on test scenes"),
                    (d / "detect" / "owod_metrics.png", "open-world detection metrics per task"),
                ],
                "detection figures",
                "detect",
            )
        )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>UniFramework report: {html.escape(ctx.cfg.name)}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = d / "report.html"
    atomic_write_text(path, page)
    log.info("report: %s", path)
    return path


def try_write_report(run_dir: str | Path) -> Path | None:
    """`write_report` for the end of a run: a failure is a logged warning, never a failed run."""
    try:
        return write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the run's results matter more than its report
        log.warning("report.html was not written (%s: %s)", type(err).__name__, err)
        return None
