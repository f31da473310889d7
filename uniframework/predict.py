"""`uniframework predict`: the class of image files — a class the run learned, or unknown.

Per image (files, or folders walked for image files), with the run's models and its unknown
detector (`openset.detector.run_detector`). When the incremental stage refitted the detector on
its final classifier (`incremental/detector/`, every learned class: known + new):
- `known_class`, `known_prob`, `scores`: the final classifier's softmax over every learned class
  (its argmax, its probability, every class's probability), by name (`classnames.class_names`:
  the known classes, then the new ones as the run learned them — named on the label page, else
  discover's `new-<j>`);
- `unknown_score`, `is_unknown`: the detector on the same features / logits (higher = more
  unknown); energy + Weibull decides by its Weibull fits, the other scorers at the threshold
  that keeps 95% of the known images it was fitted on;
- `discovered_class`: the class's name when it is one of the new classes (and not flagged);
- `prediction`: not flagged -> the learned class; flagged -> "unknown", with no class: the
  detector has ruled out every class the model learned (noise is unknown, not a new class).
Otherwise (no incremental stage, or a run finished before the refit existed) the detector is
the open-set stage's, on the supervised classifier:
- `known_class`, `known_prob`, `scores` and the detector's decision as above, over the known
  classes of the supervised classifier;
- `discovered_class`: only for flagged images: the final classifier's (incremental, else
  discover) best *new-class* output — argmax over its outputs after the k known ones, by name;
  empty without such a classifier, or when the best output is a cluster the person rejected;
- `prediction`: not flagged -> the known class; flagged -> its discovered class, else "unknown".
Either way the detector alone decides learned vs. unknown, so a row never names a class and
unknown at once. Without a detector, ORE's explicit "unknown" output decides when the model has
one, else every image is called known.
Images are read and preprocessed as the run's test view: the working copy of the classifier
file's `short_side`, resized to its `image_size`, normalised by its `mean` / `std` (metadata
`RunContext.save_model` writes; the training folder is not rescanned — only for files written
without them is the run's data rebuilt to read them). A detection run (a `detect` stage) is
handed to `uniframework.detect.predict`. In place of a run directory, a model file written by
`uniframework export` (`.onnx`) gives the same rows (`export.OnnxClassifier`, onnxruntime;
preprocessing from the file's metadata).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .classnames import class_names
from .data import resize_normalize
from .data.images import IMAGE_EXTENSIONS, UNREADABLE, read_image
from .discover.labels import REJECTED_NAME
from .errors import UserError
from .export import OnnxClassifier
from .openset.detector import Detector, run_detector
from .rows import learned_rows, make_rows
from .rundir import final_stage, open_run, preprocessing

log = logging.getLogger(__name__)

COLUMNS = [
    "path",
    "prediction",
    "known_class",
    "known_prob",
    "unknown_score",
    "is_unknown",
    "discovered_class",
    "scores",
    "error",
]


def image_paths(inputs: Sequence[str | Path]) -> list[tuple[Path, str | None]]:
    """(path, error or None) per image: files as given, folders walked for image files."""
    out: list[tuple[Path, str | None]] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
            )
            out += [(f, None) for f in found]
            if not found:
                out.append(
                    (p, f"folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
                )
        else:
            out.append((p, None if p.is_file() else "no such file or folder"))
    return out


def predict(run_dir: str | Path, inputs: Sequence[str | Path]) -> list[dict]:
    """One row per image (see the module docstring); an unreadable file gets `{path, error}`.
    `run_dir` is a run directory or an exported `.onnx` model."""
    paths = image_paths(inputs)
    classifier: RunClassifier | OnnxClassifier
    if Path(run_dir).suffix.lower() == ".onnx":
        classifier = OnnxClassifier(run_dir)
    else:
        ctx, _ = open_run(run_dir)
        if "detect" in (name for name, _ in ctx.cfg.stage_list()):
            return _predict_detect(ctx.run_dir, paths)
        if not ctx.weights_path("supervised").is_file():
            raise UserError(
                f"'{ctx.run_dir}' has no supervised classifier "
                f"({ctx.weights_path('supervised')}): predict needs a run with a finished "
                "`supervised` stage"
            )
        classifier = RunClassifier(ctx)
    rows: list[dict] = [{"path": str(p), "error": e} for p, e in paths if e]
    images, ok = [], []
    for p, err in paths:
        if err:
            continue
        try:
            # the working copy a training scan keeps: training and prediction see the same pixels
            images.append(read_image(p, classifier.short_side))
            ok.append(p)
        except UNREADABLE as e:
            rows.append({"path": str(p), "error": f"cannot read image ({type(e).__name__}: {e})"})
    if images:
        rows += classifier.classify(ok, images)
    order = {str(p): i for i, (p, _) in enumerate(paths)}  # rows in the order given
    return sorted(rows, key=lambda r: order[r["path"]])


@torch.no_grad()
def _forward(model, batch: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], logits [N, C]) in eval mode, `size` images at a time."""
    model.eval()
    features = torch.cat([model.forward_features(x) for x in batch.split(size)]).float()
    return features, model.forward_head(features)


class RunClassifier:
    """A run directory's detector and the classifier it reads (the final one for a refitted
    detector, else the supervised one), loaded once; `classify` gives the module's rows."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.detector, _ = run_detector(ctx.run_dir)
        self.refitted = self.detector is not None and self.detector.classifier != "supervised"
        self.stage = self.detector.classifier if self.refitted else "supervised"
        self.model, self.meta = ctx.load_classifier(self.stage)
        self.k = int(self.meta.get("num_known", self.model.num_classes))  # known classes
        self.pre = preprocessing(ctx, self.meta)
        if not self.refitted and self.detector is not None and final_stage(ctx) == "incremental":
            log.warning(
                "this run's unknown detector was fitted before the new classes were learned "
                "(on the supervised classifier); --restart-from incremental fits it again on "
                "the final classifier"
            )

    @property
    def short_side(self) -> int:
        return int(self.pre["short_side"])

    def classify(self, paths: list[Path], images: list[torch.Tensor]) -> list[dict]:
        pre = self.pre
        tf = resize_normalize(pre["image_size"], pre["mean"], pre["std"])  # the test view
        batch = torch.stack([tf(img) for img in images])
        features, logits = _forward(self.model, batch, self.ctx.cfg.data.batch_size)
        names = class_names(self.ctx, self.stage, self.meta)
        if self.refitted:
            n = self.detector.num_known  # every learned class
            score, unknown = self.detector.decide(features, logits)
            return learned_rows(paths, names[:n], self.k, logits[:, :n], score, unknown)
        k = self.k
        score, unknown = _unknown(self.detector, features, logits, k)
        flagged = [] if unknown is None else unknown.nonzero().flatten().tolist()
        found = dict(zip(flagged, _discovered(self.ctx, batch[flagged], k) or [], strict=False))
        return make_rows(paths, names[:k], logits[:, :k].softmax(1), score, unknown, found)


def _unknown(detector: Detector | None, features: torch.Tensor, logits: torch.Tensor, k: int):
    """(unknown score [N] or None, is-unknown [N] bool or None) from the open-set detector on
    the supervised classifier; without one, ORE's explicit "unknown" output decides when the
    model has one."""
    if detector is not None:
        return detector.decide(features, logits)
    if logits.shape[1] > k:
        return logits.softmax(1)[:, k], logits.argmax(1) == k
    log.warning("no openset stage in this run: every image is called known")
    return None, None


def _discovered(ctx, batch: torch.Tensor, k: int) -> list[str | None] | None:
    """Name of the final classifier's best new-class output (outputs k..) per image of `batch`
    (None for a rejected cluster); None without such a classifier or without images."""
    stage = final_stage(ctx)
    if stage not in ("incremental", "discover") or len(batch) == 0:
        return None
    model, meta = ctx.load_classifier(stage)
    if model.num_classes <= k:
        return None
    names = class_names(ctx, stage, meta)[k:]
    best = _forward(model, batch, ctx.cfg.data.batch_size)[1][:, k:].argmax(1)
    return [None if names[int(j)] == REJECTED_NAME else names[int(j)] for j in best]


def _predict_detect(run_dir: Path, paths: list[tuple[Path, str | None]]) -> list[dict]:
    try:
        from .detect.predict import predict_images
    except ImportError as err:
        raise UserError(
            f"'{run_dir}' is a detection run, but this installation cannot load the detection "
            f"module ({err})"
        ) from None
    good = [p for p, e in paths if e is None]
    rows = predict_images(run_dir, good) if good else []
    return [{"path": str(p), "error": e} for p, e in paths if e] + rows


def _cell(v) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v)


def format_rows(rows: list[dict], fmt: str) -> str:
    """CSV (lists / dicts / booleans as JSON in a cell, blanks for missing) or a JSON list."""
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cols += [c for c in dict.fromkeys(k for r in rows for k in r) if c not in cols]  # detection
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    writer.writerows([_cell(r.get(c)) for c in cols] for r in rows)
    return buf.getvalue()


def run_predict(
    run_dir: str | Path, inputs: Sequence[str | Path], out: Path | None, fmt: str | None
) -> int:
    """The CLI command: predict, write CSV / JSON to `out` or stdout; UserError when no image
    could be predicted."""
    rows = predict(run_dir, inputs)
    errors = [r for r in rows if "error" in r]
    if len(errors) == len(rows):
        listing = "\n  ".join(f"{r['path']}: {r['error']}" for r in errors[:10])
        raise UserError(
            f"none of the {len(rows)} input(s) could be predicted:\n  {listing}\n"
            "Give image files (or folders of them) that PIL can read."
        )
    fmt = fmt or ("json" if out is not None and out.suffix.lower() == ".json" else "csv")
    text = format_rows(rows, fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log.info("predictions for %d image(s) written to %s", len(rows), out)
    if errors:
        log.warning(
            "%d of %d input(s) could not be read (rows with an error)", len(errors), len(rows)
        )
    return 0
