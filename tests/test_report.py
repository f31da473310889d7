"""`uniframework report`: one self-contained report.html that headless Chromium renders with
every figure decoded; missing artifacts become one line naming their stage; bad run dirs exit 2.

`tiny_run` (the whole loop on 16 px digits, ~15 s) is shared with tests/test_predict.py.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from uniframework.cli import main
from uniframework.config import load_config
from uniframework.io import read_json
from uniframework.pipeline import run
from uniframework.report import confusion_counts, write_report
from uniframework.rundir import open_run

from .conftest import TINY

# pretrain (MAE, 1 epoch) -> supervised -> openset -> discover (k-means) -> incremental, on a
# 2-block ViT-tiny (4 px patches of 16 px digits); 8 supervised epochs give ~0.8 known accuracy
TINY_RUN = [
    *TINY,
    "data.image_size=16",
    "data.num_known=5",
    "data.num_tasks=2",
    "model.backbone=vit_tiny",
    "model.timm_kwargs={depth: 2}",
    "model.patch_size=4",
]
STAGES = [
    {"pretrain": {"method": "mae", "max_epochs": 1}},
    {"supervised": {"lr": 0.001, "max_epochs": 8, "warmup_epochs": 1}},
    {"openset": {}},
    {"discover": {"method": "kmeans"}},
    # the open-set stage's energy + Weibull refitted (ORE): the export's Weibull graph is tested
    {"incremental": {"source": "discover", "max_epochs": 1, "memory": 50, "detector": "openset"}},
]
SECTIONS = [
    "What ran",
    "Metrics",
    "Masked-image-modelling pretraining",
    "Feature embedding",
    "Unknown detection",
    "Discovered classes",
    "Final confusion matrix",
    "Incremental learning",
]
# runs in the page once the images have loaded: each <img> records its decoded width
PROBE = (
    "<script>addEventListener('load', () => { for (const img of document.images) "
    "img.dataset.width = img.naturalWidth; document.body.dataset.loaded = 'yes'; });</script>"
)


def _without_data_uris(page: str) -> str:
    """The page without its inlined images (base64 text may spell any word, e.g. "http")."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)


def build_tiny_run(base: Path) -> Path:
    """The tiny run under `base`; `run` skips finished stages, so building it again is cheap
    (test_predict imports the fixture, which pytest then sets up once per module)."""
    out = base / "tiny_run"
    cfg = load_config(None, TINY_RUN).model_copy(update={"stages": copy.deepcopy(STAGES)})
    run(cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return build_tiny_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's `chromium`, installed with apt-get when missing (~20 s, once per machine)."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and needs root + apt-get: apt-get install chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may hold the lock for a while
    for cmd in (
        ["apt-get", *wait, "update", "-q"],
        ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {done.stderr[-500:]}")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("apt-get installed chromium, but no `chromium` is on PATH")
    return exe


class _Tags(HTMLParser):
    """The attributes of every <img> and of <body> in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "body":
            self.body = dict(attrs)


def parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    return tags


def render(chromium: str, page: Path, tmp_path: Path) -> _Tags:
    """The DOM headless Chromium built from a copy of `page` with `PROBE` added."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=10000"]
    done = subprocess.run(
        [*cmd, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return parse(done.stdout)


def test_report_is_self_contained_and_renders_every_figure(tiny_run, chromium, tmp_path, capsys):
    assert main(["report", str(tiny_run)]) == 0
    path = tiny_run / "report.html"
    assert str(path) in capsys.readouterr().out
    page = path.read_text()
    # one file: figures inlined, no script, stylesheet or anything else fetched
    assert (
        "<script" not in page
        and "<link" not in page
        and "http" not in _without_data_uris(page).lower()
    )
    tags = parse(page)
    assert tags.images and all(i["src"].startswith("data:image/png;base64,") for i in tags.images)
    # read top to bottom in the order of the loop
    places = [page.find(f"<h2>{s}</h2>") for s in SECTIONS]
    assert -1 not in places and places == sorted(places), dict(zip(SECTIONS, places))
    state = read_json(tiny_run / "state.json")
    assert f"<td>{state['seconds']['supervised']:.4g}</td>" in page
    assert "<h3>openset</h3>" in page and "energy_weibull" in page and "known_acc" in page
    assert "<code>" not in page  # nothing reported missing
    # the pool's make-up and the class count, in words (the demo split: the pool is all novel)
    # what was found, without truth; then the benchmark's evaluation of the pool
    assert "unlabelled images look new; we see 5 new kinds (given)." in page
    assert "<th>group</th><th>images</th><th>mean confidence</th>" in page
    assert "the unlabelled pool held 0 images of known classes +" in page
    assert "(100% novel), 5 novel classes." in page
    for f in ("report/clusters.png", "report/confusion.png"):
        assert (tiny_run / f).is_file(), f
    # 1 reconstruction (1 epoch), embedding, 2 open-set, clusters, confusion, 2 incremental
    dom = render(chromium, path, tmp_path)
    assert dom.body.get("data-loaded") == "yes"
    assert len(dom.images) == len(tags.images) == 8
    assert all(int(i.get("data-width", 0)) > 0 for i in dom.images), dom.images


def test_confusion_matrix_of_the_final_classifier(tiny_run):
    ctx, _ = open_run(tiny_run)
    matrix, names, stage = confusion_counts(ctx)
    assert stage == "incremental"
    assert names == [*ctx.data.class_names, "unmatched"]
    assert matrix.shape == (11, 11) and matrix.sum() == len(ctx.data.split.test)
    assert matrix[-1].sum() == 0  # no true class is "unmatched"
    # discovered outputs mapped to true classes score what the incremental stage measured
    acc = np.trace(matrix) / matrix.sum()
    assert acc == pytest.approx(read_json(tiny_run / "metrics.json")["incremental.all_acc"])


def test_missing_artifacts_become_one_line_each(tiny_run, tmp_path):
    # a run of the supervised stage only: its files copied out of the tiny run
    for f in ("config.yaml", "metrics.json", "checkpoints/supervised.safetensors"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_run / f, tmp_path / f)
    (tmp_path / "state.json").write_text('{"done": ["supervised"], "seconds": {"supervised": 1}}')
    page = write_report(tmp_path).read_text()
    for stage in ("pretrain", "discover", "openset", "incremental"):
        assert f"they come from the <code>{stage}</code> stage" in page, stage
    assert "No MIM reconstructions" in page and "No discovered clusters" in page
    # the final classifier is then the supervised one: known classes only, no "unmatched"
    assert "final classifier (supervised)" in page and len(parse(page).images) == 1


def test_missing_or_foreign_run_dir_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"'{tmp_path / 'nope'}' does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path)]) == 2
    assert f"'{tmp_path}' is not a run directory" in capsys.readouterr().err
