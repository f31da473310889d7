"""`uniframework label RUN_DIR`: a local page where a person names the discovered classes.

The page (standard library `http.server` on 127.0.0.1 only, at the port printed; plain HTML +
JavaScript, nothing fetched from elsewhere) shows each cluster of `discover/discovered.json`
with its size and sample pool images. Per cluster the person types a name, merges it into
another cluster ("same class as"), or rejects it as noise. Saving posts the choices back; the
rules of `discover/labels.py` decide (an empty name, a name used twice, a known class's name
are refused with a message on the page, and nothing is written), else `discover/labels.json`
is written atomically. `uniframework run ... --restart-from incremental` then learns the named
classes. Ctrl-C stops the server.

A cluster that mixes two kinds (the count was too low) is split into 2-4 parts: the server
runs k-means (`split_cluster`) on the cluster's features that the discover stage saved
(`discover/features.safetensors`; no model is loaded) and the page shows each part as a card
of its own, named, merged or rejected like a cluster; "Undo split" puts the cluster back.
The assignment is saved in labels.json (`splits`), so it reads back the same.

Thumbnails come from each image's file when discovered.json lists them (`paths`, a person's
folders: only the shown images are read), else from the run's data set, rebuilt once.

The page embeds a random token that a save or split must send back in a header, and the server
answers only requests addressed to 127.0.0.1 / localhost, so another web site open in the same
browser cannot post labels (a custom header needs CORS, which is never granted) nor read the
page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import secrets
import signal
import threading
import webbrowser
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.images import UNREADABLE, read_image
from .discover.labels import (
    DISCOVERED,
    LABELS,
    LabelError,
    part_name,
    read_labels,
    save_labels,
    sha256_of,
)
from .errors import UserError
from .io import load_weights, read_json, read_meta
from .rundir import open_run

log = logging.getLogger(__name__)

SAMPLES = 8  # sample images per cluster
THUMB = 64  # shortest side of a thumbnail, px (8 px digits are scaled up, pixels kept sharp)
MAX_PARTS = 4  # a split offers 2..MAX_PARTS parts
FEATURES = "features.safetensors"  # discover's features of the grouped images
MAX_BODY = 16 << 20  # a save holds one part per image of each split cluster

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
.group { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
.group h2 { font-size: 17px; margin: 0 0 .4em; } .size { color: #666; font-weight: normal; }
.samples img { image-rendering: pixelated; border: 1px solid #eee; margin-right: 4px; }
.controls { display: flex; flex-wrap: wrap; gap: .5em 2em; margin-top: .5em; }
.group.rejected { opacity: .55; } input.name { width: 16em; }
.group.part { margin-left: 2.5em; border-style: dashed; }
.splitting { margin-top: .5em; color: #444; }
.group.is-split > .controls, .group.is-split .split-form,
.group:not(.is-split) .split-note { display: none; }
#message { margin: 1em 0; padding: .6em 1em; border-radius: 6px; white-space: pre-line; }
#message.error { background: #fde8e8; color: #8a1010; border: 1px solid #e6a0a0; }
#message.ok { background: #e6f4ea; color: #14532d; border: 1px solid #9fd1ae; }
#message:empty { display: none; }
button { font-size: 16px; padding: .4em 1.4em; } .splitting button { font-size: 14px; }
"""

# Cards to name are the clusters and the parts of split clusters (a split cluster's own card
# only holds its split). Builds {classes: [{name, clusters}], rejected: [...], splits: {...}}
# from them in page order: a card merged into another follows the chain to its root; the
# root's name or rejection decides for the group. A cluster is sent as its number, a part as
# the string "c.p".
SCRIPT = """
const TOKEN = document.body.dataset.token;
const show = (text, kind) => { const m = document.getElementById('message');
  m.textContent = text; m.className = kind; };
const active = () => [...document.querySelectorAll('section.group:not(.is-split)')];
const asRef = ref => ref.includes('.') ? ref : Number(ref);
function root(ref, cards) {
  const seen = new Set();
  while (cards[ref].querySelector('.merge').value) {
    if (seen.has(ref)) return null;
    seen.add(ref); ref = cards[ref].querySelector('.merge').value;
  }
  return ref;
}
function fillMerges() {  // "same class as" offers the other cards shown now
  const cards = active();
  for (const c of cards) {
    const sel = c.querySelector('.merge'), want = sel.value || sel.dataset.merge || '';
    const others = cards.filter(o => o !== c);
    sel.replaceChildren(new Option('(none: its own class)', ''),
      ...others.map(o => new Option(o.dataset.name, o.dataset.ref)));
    sel.value = others.some(o => o.dataset.ref === want) ? want : '';
    delete sel.dataset.merge;
  }
}
function refresh() {
  for (const c of active()) {
    const merged = c.querySelector('.merge').value, rejected = c.querySelector('.reject').checked;
    c.querySelector('.name').disabled = Boolean(merged) || rejected;
    c.querySelector('.merge').disabled = rejected;
    c.classList.toggle('rejected', rejected);
  }
}
function collect() {
  const shown = active(), cards = Object.fromEntries(shown.map(c => [c.dataset.ref, c]));
  const groups = new Map(), rejected = [], splits = {};
  for (const c of shown) {
    const ref = c.dataset.ref, r = root(ref, cards);
    if (r === null) throw new Error(c.dataset.name + ': its merges go round in a circle');
    if (cards[r].querySelector('.reject').checked) { rejected.push(asRef(ref)); continue; }
    if (!groups.has(r)) groups.set(r, []);
    groups.get(r).push(asRef(ref));
  }
  for (const c of document.querySelectorAll('section.cluster.is-split'))
    splits[c.dataset.ref] = JSON.parse(c.dataset.split);
  const classes = [...groups].map(([r, refs]) =>
    ({name: cards[r].querySelector('.name').value, clusters: refs}));
  return {classes, rejected, splits};
}
async function post(path, body) {
  const r = await fetch(path, {method: 'POST', body: JSON.stringify(body),
    headers: {'Content-Type': 'application/json', 'X-Label-Token': TOKEN}});
  return [r.ok, await r.json()];
}
const problems = (what, out) => what + ':\\n' + out.errors.map(e => '- ' + e).join('\\n');
async function save() {
  let labels;
  try { labels = collect(); } catch (e) { show(e.message, 'error'); return; }
  show('saving...', '');
  try {
    const [ok, out] = await post('labels', labels);
    if (ok) show(out.message, 'ok'); else show(problems('Not saved', out), 'error');
  } catch (e) { show('Not saved: the label server did not answer (' + e + ')', 'error'); }
}
async function split(card) {
  const parts = Number(card.querySelector('select.parts').value);
  show('splitting ' + card.dataset.name + '...', '');
  try {
    const [ok, out] = await post('split', {cluster: Number(card.dataset.ref), parts});
    if (!ok) { show(problems('Not split', out), 'error'); return; }
    card.dataset.split = JSON.stringify(out.split);
    card.classList.add('is-split');
    card.insertAdjacentHTML('afterend', out.html);
    show(out.message, 'ok');
  } catch (e) { show('Not split: the label server did not answer (' + e + ')', 'error'); }
  fillMerges(); refresh();
}
function unsplit(card) {
  for (const p of document.querySelectorAll(`section.part[data-cluster="${card.dataset.ref}"]`))
    p.remove();
  card.classList.remove('is-split'); delete card.dataset.split;
  fillMerges(); refresh();
}
document.addEventListener('change', refresh);
document.addEventListener('click', e => {
  const card = e.target.closest('section.cluster');
  if (e.target.matches('button.split')) split(card);
  else if (e.target.matches('button.unsplit')) unsplit(card);
});
document.getElementById('save').addEventListener('click', save);
fillMerges(); refresh();
"""


def thumbnail(image: np.ndarray) -> str:
    """A data URI of `image` ([H, W, 3] uint8) as PNG, scaled up to THUMB px (nearest)."""
    im = Image.fromarray(image)
    scale = max(1, THUMB // min(im.size))
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def split_cluster(features: torch.Tensor, parts: int, seed: int) -> np.ndarray:
    """The part (1..parts) of each of a cluster's images, [N]: k-means (scikit-learn,
    k-means++ with 10 restarts, `seed`) on their L2-normalised features [N, D], as discover's
    k-means; part 1 is the largest (equal sizes keep k-means' order)."""
    from .discover.clustering import kmeans

    raw = kmeans(features, parts, seed=seed).labels_
    rank = np.empty(parts, np.int64)
    rank[np.argsort(-np.bincount(raw, minlength=parts), kind="stable")] = np.arange(parts)
    return rank[raw] + 1


class LabelPage:
    """The page of one run and what a save or split does; the HTTP handler only routes to it."""

    def __init__(self, run_dir: str | Path) -> None:
        ctx, _ = open_run(run_dir)
        self.run_dir, self.folder = ctx.run_dir, ctx.run_dir / "discover"
        self.discovered = read_json(self.folder / DISCOVERED)
        if self.discovered is None:
            raise UserError(
                f"'{self.folder / DISCOVERED}' does not exist: the label page names the "
                "clusters of a finished discover stage; run it first"
            )
        self.sha = sha256_of(self.folder / DISCOVERED)
        self.k, self.n = int(self.discovered["num_known"]), int(self.discovered["num_novel"])
        self.ctx, self.known = ctx, _known_names(ctx, self.k)
        stages = dict(ctx.cfg.stage_list())
        learns = "incremental" in stages and stages["incremental"].source == "discover"
        self.min_classes = max(1, ctx.cfg.data.num_tasks - 1) if learns else 1
        self.token = secrets.token_urlsafe(16)
        self.lock, self.images_lock = threading.Lock(), threading.Lock()
        self.index = [int(i) for i in self.discovered["index"]]
        self.paths = self.discovered.get("paths")  # each grouped image's file (own folders)
        label = np.asarray(self.discovered["label"])
        # cluster -> positions of its images in discovered.json's order
        self.members = {c: np.flatnonzero(label == c) for c in range(self.k, self.k + self.n)}
        self.features, self.no_split = self._features()
        self.thumbs: dict[int, str] = {}  # position -> data URI
        for c in self.members:  # thumbnails drawn before the port is announced
            self._thumbs(self.members[c])

    def _features(self) -> tuple[torch.Tensor | None, str]:
        """Discover's features of the grouped images [N, D] in discovered.json's order, or
        None and why a split is not offered."""
        path = self.folder / FEATURES
        rerun = "rerun the discover stage (--restart-from discover) to split groups"
        if not path.is_file():
            return None, f"no {path.name} beside {DISCOVERED}: {rerun}"
        try:
            tensors, _ = load_weights(path)
        except UserError as err:
            return None, f"{err}; {rerun}"
        index, features = tensors.get("index"), tensors.get("features")
        if index is None or features is None or index.tolist() != self.index:
            return None, f"{path.name} does not belong to this {DISCOVERED}: {rerun}"
        return features, ""

    def _image(self, pos: int) -> np.ndarray:
        """Grouped image `pos` (discovered.json's order), [H, W, 3] uint8: read from its file
        when discovered.json lists them, else loaded from the rebuilt data set."""
        if self.paths is not None:
            return read_image(self.paths[pos], THUMB).permute(1, 2, 0).numpy()
        return self.ctx.data.train.load(self.index[pos]).permute(1, 2, 0).numpy()

    def _thumbs(self, positions: np.ndarray) -> str:
        """<img> tags of the first SAMPLES of these images (each drawn once)."""
        tags = []
        with self.images_lock:
            for pos in positions[:SAMPLES].tolist():
                if pos not in self.thumbs:
                    try:
                        self.thumbs[pos] = thumbnail(self._image(pos))
                    except UNREADABLE as err:  # a file moved or damaged since discover
                        log.warning("label: image %s not shown (%s)", self.paths[pos], err)
                        self.thumbs[pos] = ""
                if self.thumbs[pos]:
                    tags.append(f'<img src="{self.thumbs[pos]}" alt="">')
        return "".join(tags)

    def _previous(self) -> tuple[dict[str, str], dict[str, str], set[str], dict[int, dict]]:
        """Names, merges, rejections and splits of a labels.json saved earlier for these
        clusters; clusters and parts keyed as on the page ("7", "7.1")."""
        try:
            labels = read_labels(self.folder / DISCOVERED, self.known)
        except UserError as err:
            log.warning("label: the saved labels are not shown (%s)", err)
            labels = None
        if labels is None:
            return {}, {}, set(), {}
        classes = labels["classes"]
        names = {str(cl["clusters"][0]): cl["name"] for cl in classes}
        merged = {str(c): str(cl["clusters"][0]) for cl in classes for c in cl["clusters"][1:]}
        splits = {int(c): s for c, s in labels.get("splits", {}).items()}
        return names, merged, {str(c) for c in labels["rejected"]}, splits

    def _card(self, c: int, part: int, positions: np.ndarray, previous: tuple) -> str:
        """The card of cluster `c` (part 0) or of its part `part`: size, images, controls."""
        names, merged, rejected, splits = previous
        ref, me = f"{c}.{part}" if part else str(c), part_name((c, part), self.k)
        kind, extra = "part", ""
        if not part:
            kind = "cluster is-split" if c in splits else "cluster"
            if c in splits:
                extra = f' data-split="{html.escape(json.dumps(splits[c]))}"'
        return (
            f'<section class="group {kind}" id="{me}" data-ref="{ref}" data-cluster="{c}" '
            f'data-name="{me}"{extra}>'
            f'<h2>{me} <span class="size">({len(positions)} images)</span></h2>'
            f'<div class="samples">{self._thumbs(positions)}</div><div class="controls">'
            f'<label>Name <input class="name" type="text" '
            f'value="{html.escape(names.get(ref, ""))}" placeholder="{me}"></label>'
            f'<label>Same class as <select class="merge" data-merge="{merged.get(ref, "")}">'
            f'<option value="">(none: its own class)</option></select></label>'
            f'<label><input class="reject" type="checkbox"{" checked" * (ref in rejected)}> '
            f"Reject as noise</label></div>{'' if part else self._split_controls()}</section>"
        )

    def _split_controls(self) -> str:
        off = f' disabled title="{html.escape(self.no_split)}"' if self.no_split else ""
        options = "".join(f"<option>{p}</option>" for p in range(2, MAX_PARTS + 1))
        return (
            '<div class="splitting"><span class="split-form"><label>Mixed kinds? Split into '
            f'<select class="parts"{off}>{options}</select> parts</label> '
            f'<button class="split" type="button"{off}>Split</button></span>'
            '<span class="split-note">Split into the parts below: name, merge or reject each. '
            '<button class="unsplit" type="button">Undo split</button></span></div>'
        )

    def _part_cards(self, c: int, split: dict, previous: tuple) -> str:
        part = np.array([split["part_of"][str(self.index[pos])] for pos in self.members[c]])
        return "".join(
            self._card(c, p, self.members[c][part == p], previous)
            for p in range(1, split["parts"] + 1)
        )

    def html(self) -> str:
        """The page, with what labels.json holds now (a reload shows what was saved)."""
        previous = self._previous()
        cards = []
        for c in range(self.k, self.k + self.n):
            cards.append(self._card(c, 0, self.members[c], previous))
            if c in previous[3]:
                cards.append(self._part_cards(c, previous[3][c], previous))
        known = html.escape(", ".join(self.known))
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Name the discovered classes: {html.escape(self.ctx.cfg.name)}</title>"
            f'<style>{CSS}</style></head><body data-token="{self.token}">'
            "<h1>Name the discovered classes</h1>"
            f"<p>Run <code>{html.escape(str(self.run_dir))}</code>: {self.n} clusters "
            f"found by {html.escape(str(self.discovered.get('method')))} in the unlabelled "
            "images. Give each a name, or mark it the same class as another cluster "
            "(they are merged), or reject it as noise. A cluster that mixes kinds can be "
            "split into parts, each named like a cluster. Names must differ from each other "
            f"and from the known classes ({known}).</p>"
            f'<div id="clusters">{"".join(cards)}</div>'
            '<button id="save" type="button">Save labels</button>'
            '<div id="message" role="status"></div>'
            f"<script>{SCRIPT}</script></body></html>"
        )

    def split(self, body: bytes) -> tuple[int, dict]:
        """(HTTP status, JSON answer) of a split request {cluster, parts}: 200 with the
        assignment (`split`, as labels.json stores it) and the parts' cards, or 400."""
        try:
            ask = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return 400, {"errors": [f"the page sent no valid JSON ({err})"]}
        c, parts = (ask.get("cluster"), ask.get("parts")) if isinstance(ask, dict) else (0, 0)
        if type(c) is not int or c not in self.members:
            return 400, {"errors": [f"{c!r} is not a cluster of this run"]}
        if type(parts) is not int or not 2 <= parts <= MAX_PARTS:
            return 400, {"errors": [f"a cluster splits into 2..{MAX_PARTS} parts, not {parts!r}"]}
        me, members = part_name((c, 0), self.k), self.members[c]
        if self.features is None:
            return 400, {"errors": [self.no_split]}
        if len(members) < parts:
            return 400, {"errors": [f"{me} has {len(members)} images, too few for {parts} parts"]}
        with self.lock:  # one k-means at a time on 2 cores
            part = split_cluster(self.features[members], parts, self.ctx.cfg.seed)
        if len(set(part.tolist())) < parts:
            return 400, {"errors": [f"{me}'s images are too alike for {parts} parts; try fewer"]}
        part_of = {str(self.index[pos]): p for pos, p in zip(members.tolist(), part.tolist())}
        split = {"parts": parts, "part_of": part_of}
        sizes = ", ".join(str(int((part == p).sum())) for p in range(1, parts + 1))
        return 200, {
            "split": split,
            "html": self._part_cards(c, split, ({}, {}, set(), {})),
            "message": f"{me} split into {parts} parts ({sizes} images): name each part",
        }

    def save(self, body: bytes) -> tuple[int, dict]:
        """(HTTP status, JSON answer) of a save: 200 and the next step, or 400 and the errors."""
        try:
            labels = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return 400, {"errors": [f"the page sent no valid JSON ({err})"]}
        with self.lock:
            if sha256_of(self.folder / DISCOVERED) != self.sha:
                return 400, {
                    "errors": [
                        f"{DISCOVERED} changed since this page was loaded (discover ran "
                        "again): reload the page to see the new clusters"
                    ]
                }
            try:
                path = save_labels(self.folder, labels, self.known, self.min_classes)
            except LabelError as err:
                return 400, {"errors": err.errors}
        log.info("label: %s written", path)
        cfg = self.run_dir / "config.yaml"
        return 200, {
            "saved": str(path),
            "message": (
                f"Saved {path}: {len(labels['classes'])} classes, "
                f"{len(labels.get('rejected', []))} rejected. To learn them:\n"
                f"uniframework run {cfg} --out {self.run_dir} --restart-from incremental"
            ),
        }


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args, page: LabelPage, **kwargs) -> None:
        self.page = page
        super().__init__(*args, **kwargs)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _local(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost")

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._local():
            self._json(403, {"errors": ["only 127.0.0.1 / localhost may open this page"]})
        elif self.path.split("?")[0] in ("/", "/index.html"):
            self._send(200, self.page.html().encode(), "text/html; charset=utf-8")
        else:
            self._json(404, {"errors": [f"no page {self.path}: open /"]})

    def do_POST(self) -> None:  # noqa: N802
        if not self._local() or self.headers.get("X-Label-Token") != self.page.token:
            self._json(403, {"errors": ["not from the label page: reload it"]})
            return
        routes = {"/labels": self.page.save, "/split": self.page.split}
        if self.path not in routes:
            self._json(404, {"errors": [f"no endpoint {self.path}"]})
            return
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY:
            self._json(413, {"errors": ["too large"]})
            return
        self._json(*routes[self.path](self.rfile.read(size)))

    def log_message(self, fmt: str, *args) -> None:
        log.debug("label: " + fmt, *args)


def make_server(run_dir: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """The label page's server on 127.0.0.1:`port` (0 = a free one; `server_address[1]`)."""
    page = LabelPage(run_dir)  # thumbnails drawn before the port is announced
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Handler, page=page))
    except OSError as err:
        raise UserError(
            f"cannot serve the label page on 127.0.0.1:{port} ({err}): choose another --port, "
            "or 0 for a free one"
        ) from None
    server.daemon_threads = True
    return server


def _known_names(ctx, k: int) -> list[str]:
    """The known classes' names, from the discover checkpoint's metadata (no data set rebuilt:
    a person's folder may hold many photos), else from the run's data."""
    path = ctx.weights_path("discover")
    names = read_meta(path).get("class_names") if path.is_file() else None
    return list(names[:k]) if names else ctx.data.class_names[:k]


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(run_dir: str | Path, port: int = 0, open_browser: bool = False) -> int:
    """The CLI command: serve until Ctrl-C, then stop cleanly (exit 0)."""
    server = make_server(run_dir, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"label page: {url}  (Ctrl-C to stop; saving writes discover/{LABELS})", flush=True)
    if open_browser:
        webbrowser.open(url)
    # Ctrl-C (and a plain `kill`) stop the page even where the shell started us with SIGINT
    # ignored (a background job of a non-interactive shell), which Python would keep
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("label page stopped", flush=True)
    finally:
        server.server_close()
    return 0
