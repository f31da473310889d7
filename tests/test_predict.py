"""`uniframework predict` on the tiny run: CSV / JSON rows per image, known classes mostly
right, unreadable files get an error row (exit 0), nothing predictable or no run dir exits 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from uniframework.cli import main
from uniframework.io import read_json
from uniframework.report import open_run

from .test_report import tiny_run  # noqa: F401  (the shared run; pytest finds it by name)

PER_CLASS = 5


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
    ctx, _ = open_run(tiny_run)
    known = ctx.data.class_names[: ctx.data.split.num_known]
    discovered = read_json(tiny_run / "discover/discovered.json")["class_names"]
    for r in good:
        scores = json.loads(r["scores"])
        assert list(scores) == known and sum(scores.values()) == pytest.approx(1, abs=1e-3)
        assert r["known_class"] == max(scores, key=scores.get)
        assert float(r["known_prob"]) == max(scores.values())
        assert r["is_unknown"] in ("true", "false") and r["unknown_score"]  # energy + Weibull
        if r["is_unknown"] == "true":  # a discover stage ran: flagged rows get its class
            assert r["discovered_class"] in discovered and r["prediction"] == r["discovered_class"]
        else:  # known: the known class, no discovered class
            assert r["discovered_class"] == "" and r["prediction"] == r["known_class"]
    # known-class images: mostly their class (the tiny model scores ~0.8 on the test set)
    on_known = [r for r in good if truth[r["path"].split("/")[-1]] in known]
    right = [r["known_class"] == truth[r["path"].split("/")[-1]] for r in on_known]
    assert len(on_known) == PER_CLASS * len(known) and np.mean(right) >= 0.6, right


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
    """A run whose saved detector is KNN (features, a 95%-of-knowns threshold): predict scores
    the images' features with it and calls unknown exactly above the threshold."""
    import shutil

    from uniframework.openset.detector import Detector
    from uniframework.openset.scores import make_scorer
    from uniframework.training import extract

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ctx, _ = open_run(run)
    model, _ = ctx.load_classifier("supervised")
    k = ctx.data.split.num_known
    train = extract(model, ctx.data.loader(ctx.data.view("labelled")))
    scorer = make_scorer("knn", k=5).fit(train["features"], train["logits"][:, :k], train["labels"])
    detector = Detector.fit("knn", scorer, k, train["features"], train["logits"])
    detector.save(run / "openset")
    folder, _, truth = images
    assert main(["predict", str(run), str(folder), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if "error" not in r]
    assert len(rows) == len(truth)
    for r in rows:
        assert r["is_unknown"] == (r["unknown_score"] > detector.threshold), r


def test_only_flagged_rows_carry_a_discovered_class(tiny_run, images, tmp_path, capsys):  # noqa: F811
    """With a detector that flags about half the images (energy, threshold at the median score):
    unflagged rows show their known class and no discovered class; flagged rows show the
    discovered class of the run's final (incremental) classifier."""
    import shutil

    from uniframework.openset.detector import Detector
    from uniframework.openset.scores import make_scorer

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    k = open_run(run)[0].data.split.num_known
    folder, _, truth = images
    scorer = make_scorer("energy", temperature=1.0)
    detector = Detector("energy", scorer, k, threshold=1e9)  # flags nothing
    detector.save(run / "openset")
    assert main(["predict", str(run), str(folder), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if "error" not in r]
    assert not any(r["is_unknown"] or r["discovered_class"] for r in rows)
    detector.threshold = float(np.median([r["unknown_score"] for r in rows]))
    detector.save(run / "openset")
    assert main(["predict", str(run), str(folder), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if "error" not in r]
    assert len(rows) == len(truth)
    flagged = [r for r in rows if r["is_unknown"]]
    kept = [r for r in rows if not r["is_unknown"]]
    assert flagged and kept
    discovered = read_json(run / "discover/discovered.json")["class_names"]
    for r in kept:
        assert r["discovered_class"] is None and r["prediction"] == r["known_class"], r
    for r in flagged:
        assert r["discovered_class"] in discovered and r["prediction"] == r["discovered_class"], r
