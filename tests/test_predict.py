"""`uniframework predict` on the tiny run: CSV / JSON rows per image, unreadable files get an
error row (exit 0), nothing predictable or no run dir exits 2. On a run whose incremental stage
refitted the unknown detector on its final classifier (`learned_run`): the detector covers every
learned class, noise is unknown with no class, digits get their class; predict reads no data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniframework.cli import main
from uniframework.config import load_config
from uniframework.data import OpenWorldData
from uniframework.io import load_weights, read_json, save_weights
from uniframework.openset.detector import REFIT_DIR, Detector
from uniframework.openset.scores import make_scorer
from uniframework.pipeline import run
from uniframework.predict import predict
from uniframework.rundir import PREPROCESS, open_run
from uniframework.training import extract

from .conftest import TINY
from .test_report import tiny_run  # noqa: F401  (the shared run; pytest finds it by name)

PER_CLASS = 5
# supervised -> openset (KNN on the features) -> incremental (ORE, the split's 5 new digits) on
# 8 px digits, ~35 s: ~0.88 accuracy over all 10 classes. KNN, because it flags uniform noise
# (features far from every digit); energy scores call noise *confident* on these tiny models.
LEARNED_RUN = [
    *TINY,
    "data.num_known=5",
    "data.num_tasks=2",
    "trainer.max_epochs=6",
    "stages=[{supervised: {lr: 0.003}}, "
    "{openset: {detector: knn, scorers: [knn], figures: false}}, "
    "{incremental: {source: split, learner: ore, memory: 100, max_epochs: 6, lr: 0.005, "
    "figures: false}}]",
]


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.getbasetemp() / "learned_run"
    run(load_config(None, LEARNED_RUN), out)
    return out


def save_test_images(run_dir: Path, folder: Path, per_class: int) -> dict[str, str]:
    """`per_class` PNG test images of every class of the run's split into `folder`; returns
    {png name: true class name}."""
    ctx, _ = open_run(run_dir)
    data = ctx.data
    labels = data.split.remap(data.test.targets[data.split.test])
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for c in range(len(data.class_names)):
        for n, j in enumerate(np.flatnonzero(labels == c)[:per_class]):
            pixels = data.test.load(int(data.split.test[j])).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"class{c}_{n}.png")
            truth[f"class{c}_{n}.png"] = data.class_names[c]
    return truth


def save_noise(folder: Path, count: int = 6) -> list[Path]:
    """`count` PNGs of uniform RGB noise, of a few sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        h, w = [(8, 8), (16, 16), (40, 30)][i % 3]
        paths.append(folder / f"noise{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="session")
def learned_images(learned_run, tmp_path_factory):
    """(digits folder, {name: true class}, noise PNGs) for `learned_run`."""
    base = tmp_path_factory.mktemp("learned_images")
    truth = save_test_images(learned_run, base / "digits", PER_CLASS)
    return base / "digits", truth, save_noise(base / "noise")


@pytest.fixture
def images(tiny_run, tmp_path):  # noqa: F811
    """A folder of PNG test images: PER_CLASS per known class, 2 novel ones and a corrupt PNG;
    and a text file beside it. Returns (folder, text file, {png name: true class name})."""
    ctx, _ = open_run(tiny_run)
    data, k = ctx.data, ctx.data.split.num_known
    labels = data.split.remap(data.test.targets[data.split.test])
    folder, truth = tmp_path / "images", {}
    folder.mkdir()
    for c in [*range(k), k, k + 1]:
        for n, j in enumerate(np.flatnonzero(labels == c)[: PER_CLASS if c < k else 1]):
            name = f"class{c}_{n}.png"
            pixels = data.test.load(int(data.split.test[j])).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / name)
            truth[name] = data.class_names[c]
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    return folder, text, truth


def test_predict_csv_rows(tiny_run, images, tmp_path):  # noqa: F811
    folder, text, truth = images
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tiny_run), str(folder), str(text), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == sorted(str(p) for p in folder.iterdir()) + [str(text)]
    bad = {r["path"]: r for r in rows if r["error"]}
    assert set(bad) == {str(folder / "corrupt.png"), str(text)}
    assert all("cannot read image" in r["error"] and not r["prediction"] for r in bad.values())
    good = [r for r in rows if not r["error"]]
    assert len(good) == len(truth)
    # the detector was refitted on the final classifier: rows name any learned class
    _, meta = load_weights(tiny_run / "checkpoints/incremental.safetensors")
    learned, k = meta["model_class_names"], meta["num_known"]
    for r in good:
        scores = json.loads(r["scores"])
        assert list(scores) == learned and sum(scores.values()) == pytest.approx(1, abs=1e-3)
        assert r["known_class"] == max(scores, key=scores.get)
        assert float(r["known_prob"]) == max(scores.values())
        assert r["is_unknown"] in ("true", "false") and r["unknown_score"]  # energy + Weibull
        if r["is_unknown"] == "true":  # unknown: no class at all
            assert r["prediction"] == "unknown" and r["discovered_class"] == ""
        else:  # the learned class; a new one is also its discovered class
            assert r["prediction"] == r["known_class"]
            new = r["known_class"] in learned[k:]
            assert r["discovered_class"] == (r["known_class"] if new else "")


def test_predict_json_to_stdout(tiny_run, images, capsys):  # noqa: F811
    folder, _, truth = images
    name = sorted(truth)[0]
    assert main(["predict", str(tiny_run), str(folder / name), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["path"] == str(folder / name) and "error" not in row
    assert isinstance(row["is_unknown"], bool) and isinstance(row["scores"], dict)
    assert row["known_prob"] == max(row["scores"].values())


def test_nothing_predictable_or_no_run_dir_exits_2(tiny_run, images, tmp_path, capsys):  # noqa: F811
    folder, text, _ = images
    assert main(["predict", str(tiny_run), str(folder / "corrupt.png"), str(text)]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 input(s) could be predicted" in err and "corrupt.png" in err
    assert main(["predict", str(tmp_path / "nope"), str(folder)]) == 2
    assert f"'{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err


def test_detection_runs_go_to_the_detect_module(tiny_run, images, tmp_path, monkeypatch):  # noqa: F811
    detect_predict = pytest.importorskip("uniframework.detect.predict")

    folder, _, truth = images
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.yaml").write_text("stages:\n  - detect: {}\n")
    (tmp_path / "run/state.json").write_text('{"done": ["detect"], "seconds": {}}')
    seen = []

    def fake(run_dir, paths):
        seen.extend(paths)
        box = {"boxes": [[0, 0, 4, 4]], "labels": ["unknown"], "scores": [0.9]}
        return [{"path": str(p), **box} for p in paths]

    monkeypatch.setattr(detect_predict, "predict_images", fake)
    out = tmp_path / "det.json"
    assert main(["predict", str(tmp_path / "run"), str(folder), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(seen) == len(truth) + 1 and len(rows) == len(seen)  # the corrupt PNG too
    assert rows[0]["labels"] == ["unknown"] and rows[0]["boxes"] == [[0, 0, 4, 4]]


def test_feature_detectors_decide_in_predict(tiny_run, images, tmp_path, capsys):  # noqa: F811
    """A run whose refitted detector is KNN (features, a 95%-of-knowns threshold): predict scores
    the images' final-classifier features with it and calls unknown exactly above the
    threshold."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    ctx, _ = open_run(run_dir)
    model, meta = ctx.load_classifier("incremental")
    n = meta["num_classes"]
    train = extract(model, ctx.data.loader(ctx.data.view("labelled")))
    scorer = make_scorer("knn", k=5).fit(train["features"], train["logits"], train["labels"])
    detector = Detector.fit("knn", scorer, n, train["features"], train["logits"], "incremental")
    detector.save(run_dir / REFIT_DIR)
    folder, _, truth = images
    assert main(["predict", str(run_dir), str(folder), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if "error" not in r]
    assert len(rows) == len(truth)
    for r in rows:
        assert r["is_unknown"] == (r["unknown_score"] > detector.threshold), r


def without_refit(run_dir: Path, out: Path) -> Path:
    """A copy of `run_dir` as a run finished before the incremental stage refitted the
    detector and before classifier files held their preprocessing (`PREPROCESS`)."""
    shutil.copytree(run_dir, out)
    shutil.rmtree(out / REFIT_DIR)
    for path in (out / "checkpoints").glob("*.safetensors"):
        state, meta = load_weights(path)
        save_weights(path, state, {k: v for k, v in meta.items() if k not in PREPROCESS})
    return out


def test_only_flagged_rows_carry_a_discovered_class(tiny_run, images, tmp_path, capsys):  # noqa: F811
    """A run without the refitted detector (the open-set one, on the supervised classifier),
    with a detector that flags about half the images (energy, threshold at the median score):
    unflagged rows show their known class and no discovered class; flagged rows show the
    discovered class of the run's final (incremental) classifier."""
    run_dir = without_refit(tiny_run, tmp_path / "run")
    k = open_run(run_dir)[0].data.split.num_known
    folder, _, truth = images
    scorer = make_scorer("energy", temperature=1.0)
    detector = Detector("energy", scorer, k, threshold=1e9)  # flags nothing
    detector.save(run_dir / "openset")
    assert main(["predict", str(run_dir), str(folder), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if "error" not in r]
    assert not any(r["is_unknown"] or r["discovered_class"] for r in rows)
    detector.threshold = float(np.median([r["unknown_score"] for r in rows]))
    detector.save(run_dir / "openset")
    assert main(["predict", str(run_dir), str(folder), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if "error" not in r]
    assert len(rows) == len(truth)
    flagged = [r for r in rows if r["is_unknown"]]
    kept = [r for r in rows if not r["is_unknown"]]
    assert flagged and kept
    discovered = read_json(run_dir / "discover/discovered.json")["class_names"]
    known = open_run(run_dir)[0].data.class_names[:k]
    for r in rows:
        assert list(r["scores"]) == known  # the supervised classifier's known classes
    for r in kept:
        assert r["discovered_class"] is None and r["prediction"] == r["known_class"], r
    for r in flagged:
        assert r["discovered_class"] in discovered and r["prediction"] == r["discovered_class"], r
    # known-class images: mostly their class (the supervised model scores ~0.8 on the test set)
    on_known = [r for r in rows if truth[Path(r["path"]).name] in known]
    right = [r["known_class"] == truth[Path(r["path"]).name] for r in on_known]
    assert len(on_known) == PER_CLASS * len(known) and np.mean(right) >= 0.6, right


# -- After the incremental stage: the detector refitted on the final classifier ---------------


def test_the_detector_is_refitted_on_the_final_classifier(learned_run):
    """`stages.incremental.detector` (Mahalanobis) over the k known + n new classes: its class
    means the final classifier's features of the labelled knowns and of the new classes' images
    left after the held-out share; its threshold keeps 95% of val + that share."""
    ctx, _ = open_run(learned_run)
    opened = Detector.load(learned_run / "openset")
    refit = Detector.load(learned_run / REFIT_DIR)
    model, meta = ctx.load_classifier("incremental")
    assert opened.name == "knn" and opened.num_known == meta["num_known"] == 5
    assert refit.name == "mahalanobis" and refit.classifier == "incremental"
    assert refit.num_known == meta["num_classes"] == 10  # known + new
    assert refit.scorer.means.shape == (10, model.backbone.num_features)
    out = extract(model, ctx.data.loader(ctx.data.view("labelled")))
    known = torch.stack([out["features"][out["labels"] == c].mean(0) for c in range(5)])
    torch.testing.assert_close(refit.scorer.means[:5].float(), known, atol=1e-4, rtol=0)
    metrics = read_json(learned_run / "metrics.json")
    assert metrics["incremental.detector_known_kept"] > 0.85


def test_noise_is_unknown_with_no_class(learned_run, learned_images):
    """Uniform noise: unknown, neither a known nor a new class (the final classifier alone would
    name one of its classes)."""
    _, _, noise = learned_images
    rows = predict(learned_run, noise)
    assert len(rows) == len(noise)
    for r in rows:
        assert r["is_unknown"] and r["prediction"] == "unknown", r
        assert r["discovered_class"] is None, r


def test_digits_get_their_learned_class(learned_run, learned_images):
    """Test digits of the known classes get their known class, those of the new classes their
    new class (as `discovered_class` too); a flagged digit is unknown, with no class."""
    folder, truth, _ = learned_images
    rows = predict(learned_run, [folder])
    ctx, _ = open_run(learned_run)
    names, k = ctx.data.class_names, ctx.data.split.num_known
    assert len(rows) == len(truth)
    for r in rows:
        assert list(r["scores"]) == names  # every learned class, known then new
        if r["is_unknown"]:
            assert r["prediction"] == "unknown" and r["discovered_class"] is None
        else:
            assert r["prediction"] == r["known_class"]
            assert r["discovered_class"] == (
                r["prediction"] if r["prediction"] in names[k:] else None
            )
    true = {r["path"]: truth[Path(r["path"]).name] for r in rows}
    for part, classes in (("known", names[:k]), ("new", names[k:])):
        hits = [r["prediction"] == true[r["path"]] for r in rows if true[r["path"]] in classes]
        assert len(hits) == PER_CLASS * len(classes) and np.mean(hits) >= 0.7, (part, hits)


def test_predict_reads_no_data(learned_run, learned_images, tmp_path, monkeypatch):
    """Preprocessing and class names come from the classifier files: predict never rebuilds the
    run's data (a scan of the training folder). A run whose files lack the preprocessing still
    predicts, through the data, with the same rows."""
    folder, truth, noise = learned_images
    old = without_refit(learned_run, tmp_path / "old")
    want_old = predict(old, [folder, *noise])
    want = predict(learned_run, [folder, *noise])

    def refuse(*args, **kwargs):
        raise AssertionError("predict rebuilt the run's data")

    monkeypatch.setattr(OpenWorldData, "build", classmethod(refuse))
    assert predict(learned_run, [folder, *noise]) == want
    with pytest.raises(AssertionError, match="rebuilt the run's data"):
        predict(old, [folder])  # the old path: the data gives mean / std
    monkeypatch.undo()
    # an old run: the open-set detector on the supervised classifier, as before
    assert all(list(r["scores"]) == open_run(old)[0].data.class_names[:5] for r in want_old)
    assert len(want_old) == len(truth) + len(noise)
