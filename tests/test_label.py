"""`uniframework label`: a person names the discovered classes on a local page.

In a real browser (headless Chromium, the system's `chromium`, driven by Playwright's Python
package; no browser download): the page shows every cluster with its size and images; bad
names get a message and nothing is written; names, a merge and a rejection are saved to
`discover/labels.json`; `run --restart-from incremental` then learns the named classes, and
predict and the report call them by their names. A group split into parts on the page (k-means
on discover's saved features) is saved with its assignment and learned part by part. Also:
the server answers only its own page; thumbnails come from the images' files when discovered.json
lists them, without rebuilding the data set.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniframework.classnames import class_names
from uniframework.cli import main
from uniframework.discover.labels import sha256_of
from uniframework.incremental.tasks import plan_from_discover
from uniframework.io import load_weights, read_json, write_json
from uniframework.label import LabelPage, make_server, split_cluster
from uniframework.predict import predict
from uniframework.report import confusion_counts, write_report
from uniframework.rundir import RunContext, open_run

from .test_report import chromium, tiny_run  # noqa: F401  (shared fixtures, found by name)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:  # noqa: F811
    """A copy of the shared tiny run (5 known digits, 5 k-means clusters) to label and rerun."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("logs", "lightning_logs"))
    return out


@pytest.fixture
def sync_playwright():
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
    ).sync_playwright


def _start(run_dir: Path) -> tuple[subprocess.Popen, str]:
    """`uniframework label RUN_DIR` in its own process, and the URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "uniframework", "label", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    timer = threading.Timer(300, proc.kill)  # never hang the suite on a server that is stuck
    timer.start()
    line = proc.stdout.readline()
    timer.cancel()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not found:
        proc.kill()
        pytest.fail(f"no URL printed: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, found.group(0)


def test_a_person_names_merges_rejects_and_incremental_learns_it(
    run_copy,
    chromium,  # noqa: F811
    sync_playwright,
    tmp_path,
):
    ctx, _ = open_run(run_copy)
    k, known = 5, ctx.data.class_names[:5]
    labels_file = run_copy / "discover" / "labels.json"
    proc, url = _start(run_copy)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            cards = page.locator("section.cluster")
            assert cards.count() == 5
            for j in range(5):  # its name, its size and its images, decoded
                card = page.locator(f"#new-{j + 1}")
                assert re.search(r"\(\d+ images\)", card.locator("h2").inner_text())
                sizes = card.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
                assert sizes and all(w >= 64 for w in sizes), sizes

            def name(j: int, text: str) -> None:
                page.locator(f"#new-{j + 1} input.name").fill(text)

            def save() -> str:
                page.click("#save")
                message = page.locator("#message")
                message.locator("xpath=self::*[@class='ok' or @class='error']").wait_for()
                return message.inner_text()

            # bad input: a message on the page, nothing written
            for j, text in enumerate(["alpha", "beta", "gamma", "delta", "epsilon"]):
                name(j, text)
            name(2, "")
            assert "new-3: the name is empty" in save()
            name(2, known[1])
            assert f"'{known[1]}' is a known class" in save()
            name(2, "Alpha")
            assert "'Alpha' is already the name of new-1" in save()
            assert page.locator("#message").get_attribute("class") == "error"
            assert not labels_file.exists()
            # names, new-2 merged into new-1, new-4 rejected as noise
            name(2, "gamma")
            page.locator("#new-2 select.merge").select_option(label="new-1")
            assert page.locator("#new-2 input.name").is_disabled()
            page.locator("#new-4 input.reject").check()
            text = save()
            assert "Saved" in text and "--restart-from incremental" in text, text
            # a reload shows what was saved
            page.reload()
            assert page.locator("#new-1 input.name").input_value() == "alpha"
            assert page.locator("#new-2 select.merge").input_value() == str(k)
            assert page.locator("#new-4 input.reject").is_checked()
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "label page stopped" in out, err[-2000:]
    assert "Traceback" not in err

    saved = read_json(labels_file)
    assert saved["classes"] == [
        {"name": "alpha", "clusters": [5, 6]},
        {"name": "gamma", "clusters": [7]},
        {"name": "epsilon", "clusters": [9]},
    ]
    assert saved["rejected"] == [8]
    assert saved["discovered_sha256"] == sha256_of(run_copy / "discover/discovered.json")

    # the next incremental run learns the 3 named classes
    cfg = str(run_copy / "config.yaml")
    assert main(["run", cfg, "--out", str(run_copy), "--restart-from", "incremental", "-q"]) == 0
    metrics = read_json(run_copy / "metrics.json")
    assert metrics["incremental.num_classes"] == k + 3
    assert metrics["incremental.named_classes"] == 3
    assert metrics["incremental.merged_clusters"] == 1
    assert metrics["incremental.rejected_clusters"] == 1
    _, meta = load_weights(run_copy / "checkpoints/incremental.safetensors")
    assert meta["labels_sha256"] == sha256_of(labels_file)
    names = ["alpha", "gamma", "epsilon"]
    assert class_names(run_copy) == [*known, *names]
    # predict names them; the report says which labels were learned
    matrix, _, _ = confusion_counts(open_run(run_copy)[0])
    assert matrix.trace() / matrix.sum() == pytest.approx(metrics["incremental.all_acc"])
    pool = read_json(run_copy / "discover/discovered.json")
    rows = _predict_pool_images(run_copy, pool["index"][:20], tmp_path)
    # every row scores the new classes by their names; a row given a new class names it
    assert all(list(r["scores"])[k:] == names for r in rows)
    found = {r["discovered_class"] for r in rows} - {None}
    assert found <= set(names), found
    page = write_report(run_copy).read_text()
    assert "Named on the label page (labels.json): 3 classes: alpha (new-1 + new-2)" in page
    assert "Rejected as noise: new-4." in page and "learned these classes" in page


def _predict_pool_images(run_dir: Path, index: list[int], tmp_path: Path) -> list[dict]:
    from PIL import Image

    ctx, _ = open_run(run_dir)
    folder = tmp_path / "pool"
    folder.mkdir()
    for i in index:
        pixels = ctx.data.train.load(int(i)).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return predict(run_dir, [folder])


def test_the_server_answers_only_its_own_page(run_copy):
    server = make_server(run_copy)
    port = server.server_address[1]
    assert server.server_address[0] == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    token = server.RequestHandlerClass.keywords["page"].token

    def post(body: bytes, headers: dict, path: str = "labels") -> tuple[int, dict]:
        req = urllib.request.Request(f"{base}/{path}", body, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        with urllib.request.urlopen(base + "/", timeout=30) as r:
            assert r.status == 200 and f'data-token="{token}"' in r.read().decode()
        good = {
            "classes": [{"name": f"c{j}", "clusters": [5 + j]} for j in range(5)],
            "rejected": [],
        }
        body = json.dumps(good).encode()
        # another site's page posting here (no token), or a request to another host name
        assert post(body, {})[0] == 403
        assert post(body, {"X-Label-Token": token, "Host": "evil.example"})[0] == 403
        assert post(b'{"cluster": 5, "parts": 2}', {}, "split")[0] == 403
        status, out = post(b"{not json", {"X-Label-Token": token})
        assert status == 400 and "no valid JSON" in out["errors"][0]
        assert not (run_copy / "discover/labels.json").exists()
        status, out = post(body, {"X-Label-Token": token})
        assert status == 200 and (run_copy / "discover/labels.json").is_file()
    finally:
        server.shutdown()
        server.server_close()


def test_label_without_a_discover_result_exits_2(run_copy, capsys):
    (run_copy / "discover/discovered.json").unlink()
    assert main(["label", str(run_copy)]) == 2
    assert "discovered.json' does not exist" in capsys.readouterr().err


def _size(card) -> int:
    return int(re.search(r"\((\d+) images\)", card.locator("h2").inner_text()).group(1))


def test_a_person_splits_a_group_and_incremental_learns_its_parts(
    run_copy,
    chromium,  # noqa: F811
    sync_playwright,
):
    k = 5
    labels_file = run_copy / "discover" / "labels.json"
    proc, url = _start(run_copy)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            # a split undone: new-2 in 3 parts, then back to one group
            page.locator("#new-2 select.parts").select_option("3")
            page.click("#new-2 button.split")
            page.locator('[id="new-2.3"]').wait_for()
            assert page.locator("section.part").count() == 3
            page.click("#new-2 button.unsplit")
            assert page.locator("section.part").count() == 0
            assert page.locator("#new-2 input.name").is_visible()
            # new-1 split in 2: two part cards with its images, the group's own controls gone
            whole = _size(page.locator("#new-1"))
            page.locator("#new-1 select.parts").select_option("2")
            page.click("#new-1 button.split")
            parts = [page.locator(f'[id="new-1.{j}"]') for j in (1, 2)]
            parts[1].wait_for()
            assert page.locator("section.part").count() == 2
            assert not page.locator("#new-1 input.name").is_visible()
            sizes = [_size(card) for card in parts]
            assert sum(sizes) == whole and sizes[0] >= sizes[1] > 0
            for card in parts:
                widths = card.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
                assert widths and all(w >= 64 for w in widths), widths
            merge = page.locator("#new-2 select.merge option").all_inner_texts()
            assert "new-1.1" in merge and "new-1" not in merge  # parts are merge targets
            names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
            cards = ["new-1.1", "new-1.2", "new-2", "new-3", "new-4", "new-5"]
            for card, name in zip(cards, names, strict=True):
                page.locator(f'[id="{card}"] input.name').fill(name)
            page.click("#save")
            message = page.locator("#message")
            message.locator("xpath=self::*[@class='ok' or @class='error']").wait_for()
            assert "Saved" in message.inner_text(), message.inner_text()
            page.reload()  # the split and the parts' names read back
            assert "is-split" in page.locator("#new-1").get_attribute("class")
            assert page.locator('[id="new-1.2"] input.name').input_value() == "beta"
            assert _size(page.locator('[id="new-1.1"]')) == sizes[0]
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]

    saved = read_json(labels_file)
    assert [cl["name"] for cl in saved["classes"]] == names
    assert [cl["clusters"] for cl in saved["classes"]] == [["5.1"], ["5.2"], [6], [7], [8], [9]]
    assert saved["rejected"] == [] and list(saved["splits"]) == ["5"]
    split = saved["splits"]["5"]
    discovered = read_json(run_copy / "discover/discovered.json")
    mine = [j for j, c in enumerate(discovered["label"]) if c == k]
    assert split["parts"] == 2 and set(split["part_of"]) == {
        str(discovered["index"][j]) for j in mine
    }
    assert [Counter(split["part_of"].values())[j] for j in (1, 2)] == sizes
    # the stored assignment is the seeded k-means on discover's saved features
    features = load_weights(run_copy / "discover/features.safetensors")[0]["features"]
    again = split_cluster(features[mine], 2, seed=open_run(run_copy)[0].cfg.seed)
    assert again.tolist() == [split["part_of"][str(discovered["index"][j])] for j in mine]

    # the next incremental run learns 6 classes, each part's images under its own name
    cfg = str(run_copy / "config.yaml")
    assert main(["run", cfg, "--out", str(run_copy), "--restart-from", "incremental", "-q"]) == 0
    metrics = read_json(run_copy / "metrics.json")
    assert metrics["incremental.num_classes"] == k + 6
    assert metrics["incremental.split_clusters"] == 1
    _, meta = load_weights(run_copy / "checkpoints/incremental.safetensors")
    assert meta["num_classes"] == k + 6 and meta["labels_sha256"] == sha256_of(labels_file)
    ctx, _ = open_run(run_copy)
    assert class_names(run_copy) == [*ctx.data.class_names[:k], *names]
    plan = plan_from_discover(ctx.data, run_copy / "discover/discovered.json")
    learned = {
        int(i): int(y)
        for idx, lab in zip(plan.train_index[1:], plan.train_labels[1:], strict=True)
        for i, y in zip(idx, lab, strict=True)
    }
    assert {learned[int(i)] for i, p in split["part_of"].items() if p == 1} == {k}
    assert {learned[int(i)] for i, p in split["part_of"].items() if p == 2} == {k + 1}
    assert len(learned) == len(discovered["index"])  # nothing rejected: every image learned


def test_split_cluster_is_seeded_k_means_on_directions():
    # two directions, each row scaled anyhow: normalised, 30 + 20 rows fall apart cleanly
    gen = torch.Generator().manual_seed(0)
    x = torch.cat(
        [torch.tensor([[1.0, 0.1]]).repeat(30, 1), torch.tensor([[0.1, 1.0]]).repeat(20, 1)]
    )
    x = (x + 0.05 * torch.randn(50, 2, generator=gen)) * torch.rand(50, 1, generator=gen) * 10
    part = split_cluster(x, 2, seed=0)
    assert part.tolist() == [1] * 30 + [2] * 20  # part 1 = the largest
    assert np.array_equal(split_cluster(x, 2, seed=0), part)


def _colour(j: int) -> tuple[int, int, int]:
    """A colour of its own for the j-th grouped image."""
    return j % 256, j // 256, 200


def test_thumbnails_come_from_the_files_without_rebuilding_the_data(
    run_copy, tmp_path, monkeypatch
):
    # a person's folders: discovered.json lists each grouped image's file; here each file
    # is one flat colour, so a thumbnail shows which file it was read from
    path = run_copy / "discover/discovered.json"
    discovered = read_json(path)
    files = []
    for j in range(len(discovered["index"])):
        files.append(str(tmp_path / f"photo{j}.png"))
        Image.new("RGB", (48, 40), _colour(j)).save(files[-1])
    write_json(path, {**discovered, "paths": files})
    first = [j for j, c in enumerate(discovered["label"]) if c == 5][:8]  # new-1's samples
    Path(files[first[0]]).unlink()  # a file gone since discover: left out, no crash

    def rebuilt(self):
        raise AssertionError("the label page rebuilt the data set")

    monkeypatch.setattr(RunContext, "data", property(rebuilt))
    page = LabelPage(run_copy)

    def colours(text: str) -> list[tuple]:
        uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
        return [
            Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB").getpixel((0, 0))
            for u in uris
        ]

    card = re.search(r'<section[^>]* id="new-1".*?</section>', page.html()).group(0)
    assert colours(card) == [_colour(j) for j in first[1:]]
    status, out = page.split(json.dumps({"cluster": 5, "parts": 2}).encode())
    assert status == 200 and len(colours(out["html"])) > 0
    assert page.split(json.dumps({"cluster": 5, "parts": 9}).encode())[0] == 400
