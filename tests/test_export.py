"""`uniframework export` on the tiny run: onnxruntime gives PyTorch's outputs and decisions
(within 1e-4) on its test images for every detector — the one refitted on the final classifier,
and an older run's open-set one on the supervised classifier —, `predict model.onnx` gives the
rows of `predict RUN_DIR` (noise included), export reads no data, the Weibull closed form is
scipy's, and bad input exits 2."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from scipy.stats import weibull_min

from uniframework import export
from uniframework.cli import main
from uniframework.data import OpenWorldData
from uniframework.openset.detector import REFIT_DIR, Detector
from uniframework.openset.scores import make_scorer
from uniframework.openset.weibull import EnergyWeibullScorer, WeibullIdentifier, WeibullParams
from uniframework.predict import predict
from uniframework.rundir import open_run
from uniframework.training import extract

from .test_predict import (  # noqa: F401  (fixtures; pytest finds them by name)
    images,
    learned_images,
    learned_run,
    without_refit,
)
from .test_report import tiny_run  # noqa: F401

pytest.importorskip("onnx", reason="the `export` extra: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="the `export` extra: pip install -e '.[export]'")

TOL = {"atol": 1e-4, "rtol": 1e-5}
# Energy + Weibull's log density ratio reaches |r| ~ 1e3..1e4 (z^c with the shape c ~ 9 of the
# unknown fit), where float32 logits 1e-6 apart (onnxruntime vs PyTorch kernels) move it by ~1e-5
# of itself: its scores are compared to 1e-4 relative. Fed the same logits it is exact to 1e-5.
SCORE_TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run_test_images(tiny_run):  # noqa: F811
    """The tiny run's test images [N, 3, S, S] (its test view) and the supervised model's
    features / logits on them."""
    ctx, _ = open_run(tiny_run)
    loader = ctx.data.loader(ctx.data.view("test"))
    model, _ = ctx.load_classifier("supervised")
    return torch.cat([x for x, _, _ in loader]), extract(model, loader)


def _run(session, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}  # a scorer of logits alone drops features
    outs = session.run(names, {k: v.numpy() for k, v in feeds.items() if k in wanted})
    return {n: torch.from_numpy(o) for n, o in zip(names, outs)}


def test_onnx_outputs_match_pytorch(tiny_run, exported, run_test_images):  # noqa: F811
    """The refitted detector reads the final classifier: `known_logits` are its logits over
    every learned class, the decision its detector's on its features / logits."""
    ctx, _ = open_run(tiny_run)
    x, _ = run_test_images
    got = _run(ort.InferenceSession(str(exported)), {"image": x})
    final, _ = ctx.load_classifier("incremental")  # the tiny run's final classifier
    ref = extract(final, ctx.data.loader(ctx.data.view("test")))
    detector = Detector.load(tiny_run / REFIT_DIR)
    n = detector.num_known
    score, unknown = detector.decide(ref["features"], ref["logits"])
    assert n == final.num_classes > ctx.data.split.num_known
    torch.testing.assert_close(got["logits"], ref["logits"], **TOL)
    torch.testing.assert_close(got["features"], ref["features"], **TOL)
    torch.testing.assert_close(got["known_logits"], ref["logits"][:, :n], **TOL)
    torch.testing.assert_close(got["unknown_score"], score, **SCORE_TOL)
    assert torch.equal(got["is_unknown"], unknown) and 0 < int(unknown.sum()) < len(unknown)


def test_an_older_run_exports_both_classifiers(tiny_run, run_test_images, tmp_path):  # noqa: F811
    """A run without the refitted detector: the open-set detector on the supervised classifier
    (its known logits), the final classifier's logits beside it."""
    old = without_refit(tiny_run, tmp_path / "old")
    out = export.export_run(old, tmp_path / "old.onnx")
    ctx, _ = open_run(old)
    x, sup = run_test_images
    got = _run(ort.InferenceSession(str(out)), {"image": x})
    final, _ = ctx.load_classifier("incremental")
    ref = extract(final, ctx.data.loader(ctx.data.view("test")))
    k = ctx.data.split.num_known
    score, unknown = Detector.load(old / "openset").decide(sup["features"], sup["logits"])
    torch.testing.assert_close(got["logits"], ref["logits"], **TOL)
    torch.testing.assert_close(got["features"], ref["features"], **TOL)
    torch.testing.assert_close(got["known_logits"], sup["logits"][:, :k], **TOL)
    torch.testing.assert_close(got["unknown_score"], score, **SCORE_TOL)
    assert torch.equal(got["is_unknown"], unknown) and 0 < int(unknown.sum()) < len(unknown)
    meta = export.OnnxClassifier(out).meta
    assert meta["detector_on"] == "supervised"
    assert meta["preprocess"]["mean"] == list(ctx.data.test.mean)  # from the rebuilt data


def test_metadata_holds_class_names_detector_and_preprocessing(tiny_run, exported):  # noqa: F811
    ctx, _ = open_run(tiny_run)
    props = ort.InferenceSession(str(exported)).get_modelmeta().custom_metadata_map
    meta = {key: json.loads(v) for key, v in props.items()}
    k = ctx.data.split.num_known
    assert meta["known_class_names"] == ctx.data.class_names[:k]
    incremental = ctx.load_classifier("incremental")[1]["model_class_names"][k:]
    assert meta["new_class_names"] == incremental and meta["final_stage"] == "incremental"
    assert meta["detector_on"] == "incremental"
    saved = json.loads((tiny_run / REFIT_DIR / "detector.json").read_text())
    assert meta["detector"]["name"] == "energy_weibull" == meta["detector"]["rule"]
    assert meta["detector"]["state"] == saved["state"]  # the Weibull fits, T, alpha
    pre = meta["preprocess"]
    assert pre["image_size"] == ctx.cfg.data.image_size
    assert pre["mean"] == list(ctx.data.test.mean) and pre["std"] == list(ctx.data.test.std)
    assert pre["short_side"] == 19  # working_short_side(16): the copy training kept


def test_predict_with_the_onnx_file_gives_the_same_rows(tiny_run, exported, images, capsys):  # noqa: F811
    folder, _, truth = images
    rows = {}
    for source in (tiny_run, exported):
        assert main(["predict", str(source), str(folder), "--format", "json"]) == 0
        rows[source] = json.loads(capsys.readouterr().out)
    by_run, by_onnx = rows[tiny_run], rows[exported]
    assert len(by_onnx) == len(truth) + 1  # the corrupt PNG gets its error row too
    assert any(r.get("is_unknown") for r in by_run) and not all(r.get("is_unknown") for r in by_run)
    _same_rows(by_run, by_onnx)


def _same_rows(by_run: list[dict], by_onnx: list[dict]) -> None:
    for a, b in zip(by_run, by_onnx, strict=True):
        for key in ("path", "error", "prediction", "known_class", "is_unknown", "discovered_class"):
            assert a.get(key) == b.get(key), (key, a, b)
        if "error" not in a:  # numbers are rounded to 4 decimals: one last-digit step apart
            assert b["unknown_score"] == pytest.approx(a["unknown_score"], abs=2e-4, rel=1e-4)
            assert b["known_prob"] == pytest.approx(a["known_prob"], abs=2e-4)
            assert b["scores"] == pytest.approx(a["scores"], abs=2e-4)


def test_onnx_decides_as_predict_after_incremental(learned_run, learned_images, tmp_path):  # noqa: F811
    """The learned run's model file (KNN refitted on the final classifier): noise unknown with no
    class, digits their learned class, row for row as `predict RUN_DIR`."""
    folder, _, noise = learned_images
    out = export.export_run(learned_run, tmp_path / "learned.onnx")
    by_run, by_onnx = predict(learned_run, [folder, *noise]), predict(out, [folder, *noise])
    _same_rows(by_run, by_onnx)
    assert all(r["prediction"] == "unknown" for r in by_onnx[-len(noise) :])
    assert sum(r["prediction"] != "unknown" for r in by_onnx) > len(by_onnx) / 2


def test_export_reads_no_data(learned_run, learned_images, tmp_path, monkeypatch):  # noqa: F811
    """Export takes preprocessing and class names from the classifier files, never the run's
    data (a scan of the training folder); its model predicts as the run does."""
    folder, _, noise = learned_images
    want = predict(learned_run, [folder, *noise])

    def refuse(*args, **kwargs):
        raise AssertionError("export rebuilt the run's data")

    monkeypatch.setattr(OpenWorldData, "build", classmethod(refuse))
    out = export.export_run(learned_run, tmp_path / "model.onnx")
    _same_rows(want, predict(out, [folder, *noise]))


def _fitted(name: str, ctx, k: int) -> Detector:
    """Each kind of detector, fitted the way the openset stage fits it, on the tiny run."""
    model, _ = ctx.load_classifier("supervised")
    train = extract(model, ctx.data.loader(ctx.data.view("labelled")))
    f, logits, y = train["features"], train["logits"][:, :k], train["labels"]
    if name == "energy_weibull":  # the run's own: Weibull fits to known and unknown energies
        return Detector.load(ctx.run_dir / "openset")
    if name == "energy_weibull_known_only":  # the fallback: no unknown fit, F_known < alpha
        scorer = EnergyWeibullScorer(temperature=1.5, num_known=k).fit(f, logits, None)
        return Detector.fit("energy_weibull", scorer, k, f, logits)
    kwargs = {"k": 5} if name.startswith("knn") else {}
    kwargs = {"temperature": 1.5} if name == "energy" else kwargs
    if name == "knn_pool":  # the second bank: the unlabelled pool (labels hidden, -1)
        pool = extract(model, ctx.data.loader(ctx.data.view("unlabelled")))["features"]
        banks = torch.cat([f, pool]), torch.cat([y, torch.full((len(pool),), -1)])
        scorer = make_scorer(name, **kwargs).fit(banks[0], None, banks[1])
        return Detector.fit(name, scorer, k, f, logits)
    scorer = make_scorer(name, **kwargs).fit(f, logits, y)
    return Detector.fit(name, scorer, k, f, logits)


@pytest.mark.parametrize(
    "name",
    [
        "msp",
        "maxlogit",
        "energy",
        "mahalanobis",
        "knn",
        "knn_pool",
        "energy_weibull",
        "energy_weibull_known_only",
    ],
)
def test_every_detector_decides_in_the_graph_as_in_pytorch(name, tiny_run, run_test_images):  # noqa: F811
    ctx, _ = open_run(tiny_run)
    k = ctx.data.split.num_known
    detector = _fitted(name, ctx, k)
    graph = export.DetectorGraph(detector, k, num_outputs=k)
    _, sup = run_test_images
    f, logits = sup["features"], sup["logits"]
    onnx_bytes = export.to_onnx(graph, (f[:2], logits[:2]), ["features", "logits"], ["s", "u"])
    got = _run(ort.InferenceSession(onnx_bytes), {"features": f, "logits": logits})
    score, unknown = detector.decide(f, logits)
    torch.testing.assert_close(got["s"], score, **TOL)
    assert torch.equal(got["u"], unknown)
    assert 0 < int(unknown.sum()) < len(unknown)  # the decision is not trivially constant


def test_without_a_detector_the_unknown_output_or_nothing_decides():
    """No openset stage: ORE's explicit unknown output (index k) decides when the model has one,
    as predict's `_unknown`; without it the graph never flags (predict shows no score)."""
    logits = torch.randn(20, 4) * 3
    for num_outputs, want in ((4, (logits.softmax(1)[:, 3], logits.argmax(1) == 3)), (3, None)):
        graph = export.DetectorGraph(None, 3, num_outputs)
        x = logits[:, :num_outputs]
        onnx_bytes = export.to_onnx(graph, (x[:, :1], x[:2]), ["features", "logits"], ["s", "u"])
        got = _run(ort.InferenceSession(onnx_bytes), {"features": x[:, :1], "logits": x})
        if want is None:
            assert graph.rule == "none" and not got["u"].any()
        else:
            torch.testing.assert_close(got["s"], want[0], **TOL)
            assert torch.equal(got["u"], want[1])


@pytest.mark.parametrize("shape", [0.6, 1.0, 2.5, 9.3])
def test_weibull_closed_form_is_scipys(shape):
    p = WeibullParams(shape=shape, loc=1.3, scale=0.7)
    z = np.array([0, 1e-300, 1e-12, 1e-6, 0.01, 0.3, 0.69, 0.7, 1, 2, 5, 30, 1e3])
    x = np.concatenate([[0.0, 1.0, 1.29999], p.loc + p.scale * z])  # left of loc, at loc, right
    t = torch.from_numpy(x)
    np.testing.assert_allclose(export.weibull_logpdf(t, p).numpy(), p.logpdf(x), rtol=1e-9)
    np.testing.assert_allclose(export.weibull_logcdf(t, p).numpy(), p.logcdf(x), rtol=1e-9)
    assert p.logcdf(x)[-1] == weibull_min.logcdf(x[-1], shape, p.loc, p.scale)


@pytest.mark.parametrize("with_unknown", [True, False])
def test_weibull_ratio_is_the_identifiers(with_unknown):
    """Energies around and far beyond both fits (saturated, both densities zero) give the
    identifier's log density ratio, ranking score and decision."""
    gen = torch.Generator().manual_seed(0)
    known_e = -(3 + torch.randn(200, generator=gen).abs() * 2)  # knowns: low energy
    unknown_e = -(1 + torch.rand(100, generator=gen))
    ident = WeibullIdentifier().fit(known_e, unknown_e if with_unknown else None)
    energy = torch.cat([torch.linspace(-20, 5, 2001), known_e, unknown_e]).float()
    ratio = export.weibull_log_ratio(energy, ident)
    torch.testing.assert_close(ratio, ident.log_density_ratio(energy), atol=1e-5, rtol=1e-6)
    assert torch.equal(ratio > ident.threshold, ident.predict_unknown(energy))


def test_bad_input_exits_2(tiny_run, images, tmp_path, monkeypatch, capsys):  # noqa: F811
    folder, _, _ = images
    no_model = tmp_path / "empty_run"  # a run directory whose stages never finished
    no_model.mkdir()
    for f in ("config.yaml", "state.json"):
        shutil.copy(tiny_run / f, no_model / f)
    assert main(["export", str(no_model)]) == 2
    assert "has no supervised classifier" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "model.bin")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["predict", str(bad), str(folder)]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err
    bad.write_bytes(export.to_onnx(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), ["x"], ["y"]))
    assert main(["predict", str(bad), str(folder)]) == 2
    assert "was not written by `uniframework export`" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.onnx"), str(folder)]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "'onnx' is not installed" in err and "uniframework[export]" in err
    assert not (tmp_path / "m.onnx").exists()
