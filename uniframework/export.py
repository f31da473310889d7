"""`uniframework export`: a run's classifiers and unknown detector as one self-contained ONNX file.

The graph (`ExportGraph`) takes `image: [N, 3, S, S]` float, the run's test view (RGB scaled to
[0, 1], shorter side resized to S, centre-cropped, normalised; the numbers are in the metadata)
and returns, per image:
- `logits: [N, C]`, `features: [N, D]`: the run's final classifier (incremental, else discover,
  else supervised); its outputs k.. are the new classes named in the metadata;
- `known_logits: [N, m]`: the logits of the classes the detector knows, the classes a row can
  name: with the detector the incremental stage refitted on the final classifier
  (`incremental/detector/`, metadata `detector_on: incremental`), every learned class (m = k +
  new); else the supervised classifier's known classes (m = k);
- `unknown_score: [N]` float (higher = more unknown), `is_unknown: [N]` bool: that detector, as
  `Detector.decide`, on the features / logits of the classifier it was fitted on.
A refitted detector reads the final classifier, so the graph holds that one only. An open-set
stage's detector reads the supervised classifier, and `predict` then takes a flagged image's
discovered class from the final one: the graph holds both (once when they are one). Either way
`uniframework predict model.onnx IMAGES` gives the rows `predict RUN_DIR IMAGES` does.

Detector math inside the graph: MSP, MaxLogit, energy, Mahalanobis and KNN are the scorers' own
torch code, traced, with their saved statistics as constants. Energy + Weibull is fitted with
scipy; its densities are written out here in closed form (`weibull_logpdf`, `weibull_logcdf`,
the same branches as scipy's `weibull_min`, in float64) because a graph cannot call scipy.

Metadata (`metadata_props`, values JSON): `format`, `preprocess` (image_size, mean, std,
short_side: from the classifier file's metadata, no data rescan), `known_class_names`,
`new_class_names`, `num_known`, `final_stage`, `detector_on` (the stage whose classifier the
detector reads), `detector` (detector.json's settings and the rule), `outputs`. Exported with
the TorchScript exporter (`dynamo=False`), so onnxscript is not needed.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .classnames import class_names
from .data import resize_normalize
from .data.images import working_short_side
from .discover.labels import REJECTED_NAME
from .errors import UserError
from .io import atomic_write, read_json
from .openset.detector import Detector, run_detector
from .openset.weibull import LOG_RATIO_CAP, WeibullIdentifier, WeibullParams, ranking_score
from .rows import learned_rows, make_rows
from .rundir import final_stage, open_run, preprocessing

log = logging.getLogger(__name__)

FORMAT = "uniframework-onnx/1"
OPSET = 17
OUTPUTS = ["logits", "features", "known_logits", "unknown_score", "is_unknown"]
INSTALL = "pip install 'uniframework[export]' (onnx and onnxruntime)"


def require(module: str):
    """Import an optional dependency of export / ONNX predict, or a UserError naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"'{module}' is not installed, and ONNX export / predict needs it: {INSTALL}"
        ) from None


# -- Energy + Weibull in closed form (float64 `x = -energy`, as weibull.py's scipy calls) --------


def expm1(x: Tensor) -> Tensor:
    """exp(x) - 1, accurate near 0 (ONNX has no Expm1): Kahan's (u - 1) * x / log(u)."""
    u = torch.exp(x)
    kahan = (u - 1) * x / torch.log(u)
    return torch.where(u == 1, x, torch.where(u == 0, torch.full_like(x, -1.0), kahan))


def log1p(x: Tensor) -> Tensor:
    """log(1 + x), accurate near 0 (ONNX has no Log1p): Kahan's log(u) * x / (u - 1)."""
    u = 1 + x
    return torch.where(u == 1, x, torch.log(u) * x / (u - 1))


def weibull_logpdf(x: Tensor, p: WeibullParams) -> Tensor:
    """scipy's `weibull_min.logpdf(x, shape, loc, scale)`, `x: [N]` float64: with z = (x - loc) /
    scale, log c - log scale + (c - 1) log z - z^c on z >= 0 (at z = 0: -inf for c > 1, +inf for
    c < 1, as scipy's xlogy), -inf left of loc."""
    c, z = p.shape, (x - p.loc) / p.scale
    zp = z.clamp(min=0)
    log_z = torch.zeros_like(z) if c == 1 else (c - 1) * torch.log(zp)
    out = math.log(c) - math.log(p.scale) + log_z - zp.pow(c)
    return torch.where(z >= 0, out, torch.full_like(z, -math.inf))


def weibull_logcdf(x: Tensor, p: WeibullParams) -> Tensor:
    """scipy's `weibull_min.logcdf`, `x: [N]` float64: F = 1 - exp(-t), t = z^c; below the median
    log(-expm1(-t)), above log1p(-exp(-t)) (scipy's two branches); -inf at or left of loc."""
    c, z = p.shape, (x - p.loc) / p.scale
    t = z.clamp(min=0).pow(c)
    median = math.log(2) ** (1 / c)  # in z
    out = torch.where(z < median, torch.log(-expm1(-t)), log1p(-torch.exp(-t)))
    return torch.where(z > 0, out, torch.full_like(z, -math.inf))


def weibull_log_ratio(energy: Tensor, ident: WeibullIdentifier) -> Tensor:
    """`WeibullIdentifier.log_density_ratio` in torch: energies `[N]` -> `[N]` float32."""
    x = -energy.double()
    if ident.unknown is None:
        r = -weibull_logcdf(x, ident.known)
    else:
        lu, lk = weibull_logpdf(x, ident.unknown), weibull_logpdf(x, ident.known)
        vanish = (lu == -math.inf) & (lk == -math.inf)  # left of both: the nearer support wins
        side = math.inf if ident.unknown.loc < ident.known.loc else -math.inf
        r = torch.where(vanish, torch.full_like(x, side), lu - lk)
    r = torch.where(torch.isnan(r), torch.zeros_like(r), r)  # numpy's nan_to_num(nan=0.0)
    return r.clamp(-LOG_RATIO_CAP, LOG_RATIO_CAP).float()


# -- The graph ------------------------------------------------------------------------------------


class DetectorGraph(nn.Module):
    """(features `[N, D]`, logits `[N, C]`) -> (unknown score `[N]`, is-unknown `[N]` bool), as
    `predict._unknown`: the saved detector; without one, ORE's explicit "unknown" output (index
    k) when the model has it; else score 0 and never unknown (`rule` = "none")."""

    def __init__(self, detector: Detector | None, k: int, num_outputs: int) -> None:
        super().__init__()
        self.detector, self.k = detector, k
        if detector is not None:
            self.rule = detector.name
        else:
            self.rule = "unknown_output" if num_outputs > k else "none"

    def forward(self, features: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        if self.rule == "unknown_output":
            return logits.softmax(1)[:, self.k], logits.argmax(1) == self.k
        if self.rule == "none":
            zero = logits[:, 0] * 0
            return zero, zero > 0
        det = self.detector
        if det.threshold is None:  # energy + Weibull: decided by its fits
            scorer = det.scorer
            energy = scorer._energy(logits[:, : self.k])  # [N]
            ratio = weibull_log_ratio(energy, scorer.identifier)
            return ranking_score(ratio, energy), ratio > scorer.identifier.threshold
        score = det.score(features, logits)  # [N] float32, the scorer's own torch code
        return score, score > det.threshold


class ExportGraph(nn.Module):
    """`image [N, 3, S, S]` -> the `OUTPUTS` of the module docstring."""

    def __init__(self, supervised: nn.Module, final: nn.Module | None, detector: DetectorGraph):
        super().__init__()
        self.supervised, self.final, self.detector = supervised, final, detector

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        features = self.supervised.forward_features(image).float()  # [N, D]
        logits = self.supervised.forward_head(features)  # [N, C_supervised]
        score, unknown = self.detector(features, logits)
        known = logits[:, : self.detector.k]
        if self.final is not None:
            features = self.final.forward_features(image).float()
            logits = self.final.forward_head(features)  # [N, C]
        return logits, features, known, score, unknown


def to_onnx(
    module: nn.Module, example: tuple[Tensor, ...], inputs: list[str], outputs: list[str]
) -> bytes:
    """`module` traced on `example` (TorchScript exporter, no onnxscript), every input and
    output with a dynamic first (batch) axis."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the legacy exporter's deprecation notice, and timm's traced input-size asserts
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            buf,
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
            opset_version=OPSET,
        )
    return buf.getvalue()


def export_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's ONNX model to `out` (default `RUN_DIR/model.onnx`), atomically."""
    onnx = require("onnx")
    ctx, _ = open_run(run_dir)
    if "detect" in (name for name, _ in ctx.cfg.stage_list()):
        raise UserError(f"'{ctx.run_dir}' is a detection run: export takes classification runs")
    out = Path(out) if out is not None else ctx.run_dir / "model.onnx"
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out '{out}' must end in .onnx (predict recognises the model by it)")
    stage = final_stage(ctx)
    if stage is None or not ctx.weights_path("supervised").is_file():
        raise UserError(
            f"'{ctx.run_dir}' has no supervised classifier ({ctx.weights_path('supervised')}): "
            "export needs a run with a finished `supervised` stage; run it first"
        )
    found, folder = run_detector(ctx.run_dir)
    refitted = found is not None and found.classifier != "supervised"
    # the graph's first classifier: the one the detector reads
    first = found.classifier if refitted else "supervised"
    classifier, meta = ctx.load_classifier(first)
    k = int(meta.get("num_known", classifier.num_classes))  # known classes
    final, final_meta = (None, meta) if stage == first else ctx.load_classifier(stage)
    new_names = class_names(ctx, stage, final_meta)[k:] if stage != "supervised" else []
    m = found.num_known if refitted else k  # the classes a row can name
    detector = DetectorGraph(found, m, classifier.num_classes)
    graph = ExportGraph(classifier, final, detector).eval()  # eval(): every submodule
    pre = preprocessing(ctx, meta)  # the file's numbers: no rescan of the training folder
    size = pre["image_size"]
    example = (torch.zeros(2, 3, size, size),)
    model = onnx.load_from_string(to_onnx(graph, example, ["image"], OUTPUTS))
    saved = read_json(folder / "detector.json", {})
    settings = {k_: v for k_, v in saved.items() if k_ != "available"}
    metadata = {
        "format": FORMAT,
        "preprocess": {
            **pre,
            "steps": "RGB uint8 (working copy: shorter side at most short_side) -> shorter side "
            "resized to image_size (antialiased), centre crop image_size x image_size, scaled "
            "to [0, 1], (x - mean) / std per channel",
            "layout": "NCHW float32",
        },
        "known_class_names": class_names(ctx, first, meta)[:k],
        "new_class_names": new_names,
        "num_known": k,
        "final_stage": stage,
        "detector_on": first if found is not None else None,
        "detector": {**settings, "rule": detector.rule},
        "outputs": OUTPUTS,
        "run": {"name": ctx.cfg.name, "dir": str(ctx.run_dir)},
    }
    onnx.helper.set_model_props(model, {key: json.dumps(v) for key, v in metadata.items()})
    model.doc_string = __doc__.split("\n\n")[0]
    onnx.checker.check_model(model)
    atomic_write(out, lambda tmp: onnx.save(model, tmp))
    log.info(
        "export: %s classifier + %s detector (on the %s classifier) -> %s",
        stage,
        detector.rule,
        first,
        out,
    )
    return out


# -- Reading it back: `uniframework predict model.onnx IMAGES` -------------------------------------


class OnnxClassifier:
    """An exported model run with onnxruntime; `classify` gives `predict`'s rows."""

    def __init__(self, path: str | Path, batch_size: int = 256) -> None:
        ort = require("onnxruntime")
        path, self.batch_size = Path(path), batch_size
        if not path.is_file():
            raise UserError(
                f"model file '{path}' does not exist: write it with uniframework export"
            )
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own types for a damaged file
            raise UserError(
                f"'{path}' is not a readable ONNX model ({type(err).__name__}: {err}); "
                "export it again with uniframework export"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("format") != json.dumps(FORMAT):
            raise UserError(
                f"'{path}' was not written by `uniframework export` (or by another version: "
                f"no format {FORMAT!r} in its metadata); export the run again"
            )
        self.meta = {key: json.loads(v) for key, v in props.items()}

    @property
    def short_side(self) -> int:
        """The working copy's short side images are read at (`read_image`), as training did."""
        pre = self.meta["preprocess"]
        return int(pre.get("short_side") or working_short_side(pre["image_size"]))

    def classify(self, paths: list[Path], images: list[Tensor]) -> list[dict]:
        pre, meta = self.meta["preprocess"], self.meta
        tf = resize_normalize(pre["image_size"], pre["mean"], pre["std"])
        batch = torch.stack([tf(img) for img in images]).numpy()
        parts = [
            self.session.run(OUTPUTS, {"image": batch[i : i + self.batch_size]})
            for i in range(0, len(batch), self.batch_size)
        ]
        logits, _, known, score, unknown = (
            torch.from_numpy(np.concatenate(outs)) for outs in zip(*parts)
        )
        new, k = meta["new_class_names"], meta["num_known"]
        if meta.get("detector_on") not in (None, "supervised"):  # refitted: every learned class
            names = [*meta["known_class_names"], *new][: known.shape[1]]
            return learned_rows(paths, names, k, known, score, unknown)
        if meta["detector"]["rule"] == "none":
            log.warning("no openset stage in this run: every image is called known")
            score = unknown = None
        flagged = [] if unknown is None else unknown.nonzero().flatten().tolist()
        found = {i: new[int(logits[i, k:].argmax())] for i in flagged} if new else {}
        found = {i: None if name == REJECTED_NAME else name for i, name in found.items()}
        return make_rows(paths, meta["known_class_names"], known.softmax(1), score, unknown, found)
