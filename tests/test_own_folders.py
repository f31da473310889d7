"""A person's own open world: labelled/ + unlabelled/ (+ test/) folders, and no stage that reads
the pool's hidden classes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from uniframework.cli import main
from uniframework.config import load_config
from uniframework.data import OpenWorldData
from uniframework.discover.labels import save_labels
from uniframework.errors import UserError
from uniframework.io import load_weights, read_json
from uniframework.pipeline import run

KNOWN, PER_CLASS = [0, 1, 2, 3, 4], 40
QUICK = [
    "data.image_size=16",
    "data.batch_size=32",
    "data.batched=false",
    "data.cutout=0",
    "model.backbone=resnet_tiny",
    "model.timm_kwargs={}",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def _save(img: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255 / 16).astype(np.uint8), "L").resize((16, 16)).save(path)


def own_world(root, test: bool = True):
    """The embedded digits as a person's folders: labelled/ = half of digits 0-4; unlabelled/ =
    one flat folder of randomly named files with the other half of 0-4 and digits 5-9; test/ =
    a few images of every digit (5-9 are new there)."""
    d = load_digits()
    rng = np.random.default_rng(0)
    names = iter(rng.permutation(100_000))
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))[: PER_CLASS + 10]
        pool = idx[:PER_CLASS] if c >= 5 else idx[PER_CLASS // 2 : PER_CLASS]
        if c in KNOWN:
            for i in idx[: PER_CLASS // 2]:
                _save(d.images[i], root / "labelled" / f"digit{c}" / f"{i}.png")
        for i in pool:
            _save(d.images[i], root / "unlabelled" / f"IMG_{next(names):05d}.png")
        if test:
            for i in idx[PER_CLASS:]:
                _save(d.images[i], root / "test" / f"digit{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return own_world(tmp_path_factory.mktemp("photos"))


def _config(root, *extra):
    return load_config("configs/my-photos.yaml", [f"data.root={root}", *QUICK, *extra])


def test_the_pool_has_no_label_anywhere(world):
    data = OpenWorldData.build(_config(world).data, 0)
    assert data.user_mode and data.truth is None and data.pool_truth([0]) is None
    assert data.split.num_known == 5 and data.class_names[:5] == [f"digit{c}" for c in KNOWN]
    pool = data.split.unlabelled
    assert len(pool) == 5 * PER_CLASS // 2 + 5 * PER_CLASS
    assert (data.train.targets[pool] == -1).all() and (data.view("unlabelled").labels == -1).all()
    assert {p.parent.name for p in np.asarray(data.train.paths)[pool]} == {"unlabelled"}
    # the test folder's digits 5-9 are new: model labels after the known ones
    assert data.class_names[5:] == [f"digit{c}" for c in range(5, 10)]
    assert sorted(np.unique(data.test.targets)) == list(range(10))


def test_the_loop_runs_on_own_folders_and_says_what_it_found(world, tmp_path, capsys):
    cfg = _config(
        world,
        "stages.discover.estimate_epochs=2",
        "stages.discover.max_epochs=2",
        "stages.discover.max_novel=6",
        "stages.incremental.max_epochs=1",
        "stages.incremental.balanced_epochs=1",
        "stages.incremental.memory=50",
    )
    m = run(cfg, tmp_path)
    # truth-free diagnostics
    assert 0 < m["openset.pool_flagged_share"] <= 1 and 0 < m["discover.pool_flagged_share"] <= 1
    # the config's `detector: auto`: the scorer flagging the most of the pool at 95% of the
    # held-out knowns kept
    shares = {k.split(".")[1]: v for k, v in m.items() if k.endswith(".pool_flagged")}
    picked = read_json(tmp_path / "openset/detector.json")["name"]
    assert len(shares) == 7 and shares[picked] == max(shares.values())
    n = int(m["discover.num_novel"])
    assert n == m["discover.num_novel_est"] and 2 <= n <= 6
    sizes = [m[f"discover.group_{j + 1}_size"] for j in range(n)]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == m["discover.pool_size"]
    assert all(0 < m[f"discover.group_{j + 1}_confidence"] <= 1 for j in range(n) if sizes[j])
    # evaluation from test/ only: no metric from the pool's classes, which do not exist
    assert "discover.test_novel_acc" in m and "openset.auroc" in m and "supervised.known_acc" in m
    assert not any(k.startswith(("discover.gcd_", "discover.novel_")) for k in m)
    assert "discover.num_novel_true" not in m and "openset.auto_unknown_precision" not in m
    found = read_json(tmp_path / "discover/discovered.json")
    assert found["class_names"] == [f"new-{j + 1}" for j in range(n)]
    with open(tmp_path / "discover/groups.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["discover.pool_size"]
    assert {r["group"] for r in rows} <= {f"new-{j + 1}" for j in range(n)}
    assert all("/unlabelled/IMG_" in r["image"] for r in rows)
    page = (tmp_path / "report.html").read_text()
    assert f"unlabelled images look new; we see {n} new kinds (estimated)" in page
    # a person names the groups, the new classes are learned, then predict on a new photo
    labels = {
        "classes": [{"name": f"kind {j}", "clusters": [5 + j]} for j in range(n)],
        "rejected": [],
    }
    save_labels(
        tmp_path / "discover", labels, found["class_names"][:0] + [f"digit{c}" for c in KNOWN]
    )
    m2 = run(cfg, tmp_path, restart_from="incremental")
    assert "incremental.all_acc" in m2
    assert (
        main(
            [
                "predict",
                str(tmp_path),
                str(world / "test" / "digit7"),
                "--out",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rows and all("~" not in str(r.get("discovered_class", "")) for r in rows)


def test_options_that_need_the_pools_classes_are_refused(world, tmp_path):
    for key, word in (
        ("stages.discover.pool=novel", "pool = novel"),
        ("stages.discover.num_novel=null", "num_novel = null"),
        ("stages.incremental.source=split", "source = split"),
    ):
        cfg = _config(
            world,
            key,
            "trainer.max_epochs=1",
            "stages.discover.max_epochs=1",
            "stages.discover.estimate_epochs=1",
        )
        with pytest.raises(UserError, match=word):
            run(cfg, tmp_path / key.split("=")[0])


@pytest.mark.parametrize(
    "key",
    [
        "data.num_known=3",
        "data.labelled_fraction=0.5",
        "data.max_per_class=10",
        "data.test_fraction=0.3",
    ],
)
def test_benchmark_keys_are_refused_on_own_folders(world, key):
    with pytest.raises(UserError, match=key.split("=")[0]):
        OpenWorldData.build(_config(world, key).data, 0)


def test_bad_own_folders_get_a_clear_message(tmp_path):
    root = own_world(tmp_path / "w", test=False)
    for f in (root / "unlabelled").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="unlabelled.*no image files"):
        OpenWorldData.build(_config(root).data, 0)
    one = tmp_path / "one"
    _save(np.zeros((8, 8)), one / "labelled" / "a" / "x.png")
    _save(np.zeros((8, 8)), one / "unlabelled" / "y.png")
    with pytest.raises(UserError, match="at least 2 known classes"):
        OpenWorldData.build(_config(one).data, 0)
    (root / "test" / "digit0").mkdir(parents=True)
    _save(np.zeros((8, 8)), root / "unlabelled" / "z.png")
    with pytest.raises(UserError, match="digit0.*empty"):
        OpenWorldData.build(_config(root).data, 0)


def test_odd_files_in_the_unlabelled_folder_are_skipped_or_read(tmp_path):
    root = own_world(tmp_path / "w", test=False)
    pool = root / "unlabelled"
    (pool / "empty.jpg").write_bytes(b"")
    (pool / "notes.jpg").write_text("not an image")
    Image.new("CMYK", (20, 12), (0, 128, 0, 0)).save(pool / "cmyk.jpg")
    Image.fromarray(np.full((10, 10), 40000, np.uint16)).save(pool / "deep.png")
    data = OpenWorldData.build(_config(root).data, 0)
    names = {p.name for p in np.asarray(data.train.paths)[data.split.unlabelled]}
    assert {"cmyk.jpg", "deep.png"} <= names and not {"empty.jpg", "notes.jpg"} & names
    deep = data.train.load(data.train.paths.index(pool / "deep.png"))
    assert deep.shape[0] == 3 and 150 < deep.float().mean() < 160  # 40000 / 65535 * 255 = 156


def test_no_stage_reads_the_pools_truth(tmp_path, monkeypatch):
    """The same benchmark run twice, with the options a person has (the pool from the detector,
    the count estimated): once as it is, once with the pool's classes gone before any stage
    runs. Everything but the evaluation is identical: weights, detector, groups, names."""
    cfg = load_config(
        "configs/demo.yaml",
        [
            "data.max_per_class=60",
            "data.image_size=8",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "stages.discover.estimate_epochs=1",
            "stages.discover.max_epochs=1",
            "stages.discover.max_novel=4",
            "stages.incremental.max_epochs=1",
            "stages.incremental.memory=40",
            "stages.openset.detector=auto",  # picked by the pool it flags: no truth read
        ],
    )
    with_truth = run(cfg, tmp_path / "truth")
    build = OpenWorldData.build.__func__

    def blind(cls, data_cfg, seed):
        data = build(cls, data_cfg, seed)
        data.truth = None  # as for a person's own pool
        return data

    monkeypatch.setattr(OpenWorldData, "build", classmethod(blind))
    without = run(cfg, tmp_path / "blind")
    evaluation = (
        "acc",
        "auroc",
        "fpr95",
        "aupr",
        "oscr",
        "nmi",
        "ari",
        "true",
        "precision",
        "recall",
        "unlabelled_",
        "forgetting",
        "known_kept",
        "unknown_caught",
        "novel_fraction",
        "truly",
    )
    for key, value in without.items():
        if not any(word in key for word in evaluation):
            assert with_truth[key] == pytest.approx(value, nan_ok=True), key
    for stage in ("supervised", "discover", "incremental"):
        a, _ = load_weights(tmp_path / "truth" / "checkpoints" / f"{stage}.safetensors")
        b, _ = load_weights(tmp_path / "blind" / "checkpoints" / f"{stage}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    assert (tmp_path / "truth/openset/detector.json").read_text() == (
        tmp_path / "blind/openset/detector.json"
    ).read_text()
    d1 = read_json(tmp_path / "truth/discover/discovered.json")
    d2 = read_json(tmp_path / "blind/discover/discovered.json")
    d1.pop("mapping"), d2.pop("mapping")  # the match to true classes: evaluation
    assert d1 == d2
    assert (tmp_path / "truth/discover/groups.csv").read_text() == (
        tmp_path / "blind/discover/groups.csv"
    ).read_text()
