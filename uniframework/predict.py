"""`uniframework predict`: known class / unknown / discovered class of image files, with scores.

Per image (files, or folders walked for image files), with the run's models:
- `known_class`, `known_prob`, `scores`: the supervised classifier's softmax over the known
  classes (its argmax, its probability, every class's probability);
- `unknown_score`, `is_unknown`: the open-set detector (`openset/detector.json`, any scorer) on
  the same features / known-class logits (higher = more unknown); energy + Weibull decides by
  its Weibull fits, the other scorers at the threshold that keeps 95% of held-out knowns;
- `discovered_class`: only for images the detector flags unknown (empty otherwise): the final
  classifier's (incremental, else discover) best *new-class* output — argmax over its outputs
  after the k known ones, by name (`classnames.class_names`: the names given on the label page
  when the run learned them) — with the known outputs left out, since the detector has already
  ruled them out; empty without such a classifier, or when the best output is a cluster the
  person rejected as noise;
- `prediction`: not flagged -> the known class; flagged -> its discovered class, else "unknown".
  The detector alone decides known vs. unknown, so a row never names a known and a new class
  at once; an incremental classifier's own argmax over all classes is not used.
Images are preprocessed like the run's test view (`make_transform`, the dataset's mean / std /
size). A detection run (a `detect` stage) is handed to `uniframework.detect.predict`. In place of
a run directory, a model file written by `uniframework export` (`.onnx`) gives the same rows
(`export.OnnxClassifier`, onnxruntime; preprocessing from the file's metadata).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from .classnames import class_names
from .data import make_transform
from .data.images import IMAGE_EXTENSIONS, UNREADABLE, read_image, working_short_side
from .discover.labels import REJECTED_NAME
from .errors import UserError
from .report import final_stage, open_run

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
    classify: Callable[[list[Path], list[torch.Tensor]], list[dict]]
    if Path(run_dir).suffix.lower() == ".onnx":
        from .export import OnnxClassifier

        onnx = OnnxClassifier(run_dir)
        classify, image_size = onnx.classify, onnx.meta["preprocess"]["image_size"]
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
        classify, image_size = partial(_classify, ctx), ctx.cfg.data.image_size
    rows: list[dict] = [{"path": str(p), "error": e} for p, e in paths if e]
    images, ok = [], []
    for p, err in paths:
        if err:
            continue
        try:
            # the working copy a training scan keeps: training and prediction see the same pixels
            images.append(read_image(p, working_short_side(image_size)))
            ok.append(p)
        except UNREADABLE as e:
            rows.append({"path": str(p), "error": f"cannot read image ({type(e).__name__}: {e})"})
    if images:
        rows += classify(ok, images)
    order = {str(p): i for i, (p, _) in enumerate(paths)}  # rows in the order given
    return sorted(rows, key=lambda r: order[r["path"]])


@torch.no_grad()
def _forward(model, batch: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], logits [N, C]) in eval mode, `size` images at a time."""
    model.eval()
    features = torch.cat([model.forward_features(x) for x in batch.split(size)]).float()
    return features, model.forward_head(features)


def _classify(ctx, paths: list[Path], images: list[torch.Tensor]) -> list[dict]:
    cfg = ctx.cfg
    # the run's test-view preprocessing: its dataset's mean / std, resized to image_size
    tf = make_transform(ctx.data.test, cfg.data.image_size, train=False)
    batch = torch.stack([tf(img) for img in images])
    model, meta = ctx.load_classifier("supervised")
    k = int(meta.get("num_known", model.num_classes))
    names = class_names(ctx, "supervised", meta)[:k]  # model label order: the known classes
    features, logits = _forward(model, batch, cfg.data.batch_size)
    score, unknown = _unknown(ctx.run_dir, features, logits, k)
    flagged = [] if unknown is None else unknown.nonzero().flatten().tolist()
    found = dict(zip(flagged, _discovered(ctx, batch[flagged], k) or [], strict=False))
    return make_rows(paths, names, logits[:, :k].softmax(1), score, unknown, found)


def make_rows(
    paths: list[Path],
    names: list[str],
    probs: torch.Tensor,
    score: torch.Tensor | None,
    unknown: torch.Tensor | None,
    found: dict[int, str],
) -> list[dict]:
    """The rows of the module docstring from known-class probabilities `[N, k]` (`names`: the k
    known classes), the detector's scores / decisions `[N]` (None without a detector) and the
    discovered class name of flagged image i, `found[i]`."""
    rows = []
    for i, p in enumerate(paths):
        known = names[int(probs[i].argmax())]
        is_unknown = bool(unknown[i]) if unknown is not None else False
        rows.append(
            {
                "path": str(p),
                "prediction": (found.get(i) or "unknown") if is_unknown else known,
                "known_class": known,
                "known_prob": round(float(probs[i].max()), 4),
                "unknown_score": None if score is None else round(float(score[i]), 4),
                "is_unknown": is_unknown,
                "discovered_class": found.get(i),  # None (blank) unless flagged unknown
                "scores": {n: round(float(v), 4) for n, v in zip(names, probs[i], strict=True)},
            }
        )
    return rows


def _unknown(run_dir: Path, features: torch.Tensor, logits: torch.Tensor, k: int):
    """(unknown score [N] or None, is-unknown [N] bool or None) from the saved detector; without
    one, ORE's explicit "unknown" output decides when the model has one."""
    from .openset.detector import Detector

    detector = Detector.load(run_dir / "openset")
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
