"""`uniframework label RUN_DIR`: a local page where a person names the discovered classes.

The page (standard library `http.server` on 127.0.0.1 only, at the port printed; plain HTML +
JavaScript, nothing fetched from elsewhere) shows each cluster of `discover/discovered.json`
with its size and sample pool images. Per cluster the person types a name, merges it into
another cluster ("same class as"), or rejects it as noise. Saving posts the choices back; the
rules of `discover/labels.py` decide (an empty name, a name used twice, a known class's name
are refused with a message on the page, and nothing is written), else `discover/labels.json`
is written atomically. `uniframework run ... --restart-from incremental` then learns the named
classes. Ctrl-C stops the server.

The page embeds a random token that a save must send back in a header, and the server answers
only requests addressed to 127.0.0.1 / localhost, so another web site open in the same browser
cannot post labels (a custom header needs CORS, which is never granted) nor read the page.
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
from PIL import Image

from .discover.labels import (
    DISCOVERED,
    LABELS,
    LabelError,
    cluster_name,
    read_labels,
    save_labels,
    sha256_of,
)
from .errors import UserError
from .io import read_json
from .report import open_run

log = logging.getLogger(__name__)

SAMPLES = 8  # sample images per cluster
THUMB = 64  # shortest side of a thumbnail, px (8 px digits are scaled up, pixels kept sharp)
MAX_BODY = 1 << 20

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
.cluster { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
.cluster h2 { font-size: 17px; margin: 0 0 .4em; } .size { color: #666; font-weight: normal; }
.samples img { image-rendering: pixelated; border: 1px solid #eee; margin-right: 4px; }
.controls { display: flex; flex-wrap: wrap; gap: .5em 2em; margin-top: .5em; }
.cluster.rejected { opacity: .55; } input.name { width: 16em; }
#message { margin: 1em 0; padding: .6em 1em; border-radius: 6px; white-space: pre-line; }
#message.error { background: #fde8e8; color: #8a1010; border: 1px solid #e6a0a0; }
#message.ok { background: #e6f4ea; color: #14532d; border: 1px solid #9fd1ae; }
#message:empty { display: none; }
button { font-size: 16px; padding: .4em 1.4em; }
"""

# Builds {classes: [{name, clusters}], rejected: [...]} from the cards: a cluster merged into
# another follows the chain to its root; the root's name or rejection decides for the group.
SCRIPT = """
const TOKEN = document.body.dataset.token;
const cards = [...document.querySelectorAll('.cluster')];
const byId = Object.fromEntries(cards.map(c => [c.dataset.cluster, c]));
const show = (text, kind) => { const m = document.getElementById('message');
  m.textContent = text; m.className = kind; };
function root(id) {
  const seen = new Set();
  while (byId[id].querySelector('.merge').value) {
    if (seen.has(id)) return null;
    seen.add(id); id = byId[id].querySelector('.merge').value;
  }
  return id;
}
function refresh() {
  for (const c of cards) {
    const merged = c.querySelector('.merge').value, rejected = c.querySelector('.reject').checked;
    c.querySelector('.name').disabled = Boolean(merged) || rejected;
    c.querySelector('.merge').disabled = rejected;
    c.classList.toggle('rejected', rejected);
  }
}
function collect() {
  const groups = new Map(), rejected = [];
  for (const c of cards) {
    const id = c.dataset.cluster, r = root(id);
    if (r === null) throw new Error(c.dataset.name + ': its merges go round in a circle');
    if (byId[r].querySelector('.reject').checked) { rejected.push(Number(id)); continue; }
    if (!groups.has(r)) groups.set(r, []);
    groups.get(r).push(Number(id));
  }
  const classes = [...groups].map(([r, ids]) =>
    ({name: byId[r].querySelector('.name').value, clusters: ids}));
  return {classes, rejected};
}
async function save() {
  let labels;
  try { labels = collect(); } catch (e) { show(e.message, 'error'); return; }
  show('saving...', '');
  try {
    const r = await fetch('labels', {method: 'POST', body: JSON.stringify(labels),
      headers: {'Content-Type': 'application/json', 'X-Label-Token': TOKEN}});
    const out = await r.json();
    if (r.ok) show(out.message, 'ok');
    else show('Not saved:\\n' + out.errors.map(e => '- ' + e).join('\\n'), 'error');
  } catch (e) { show('Not saved: the label server did not answer (' + e + ')', 'error'); }
}
for (const c of cards) c.addEventListener('change', refresh);
document.getElementById('save').addEventListener('click', save);
refresh();
"""


def thumbnail(image: np.ndarray) -> str:
    """A data URI of `image` ([H, W, 3] uint8) as PNG, scaled up to THUMB px (nearest)."""
    im = Image.fromarray(image)
    scale = max(1, THUMB // min(im.size))
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class LabelPage:
    """The page of one run and what a save does; the HTTP handler only routes to it."""

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
        self.ctx, self.known = ctx, ctx.data.class_names[: self.k]
        stages = dict(ctx.cfg.stage_list())
        learns = "incremental" in stages and stages["incremental"].source == "discover"
        self.min_classes = max(1, ctx.cfg.data.num_tasks - 1) if learns else 1
        self.token = secrets.token_urlsafe(16)
        self.lock = threading.Lock()
        self.samples = {c: self._samples(c) for c in range(self.k, self.k + self.n)}

    def _samples(self, c: int) -> tuple[int, str]:
        """Cluster `c`'s size and <img> tags of its first SAMPLES pool images (drawn once)."""
        index = np.asarray(self.discovered["index"])
        members = index[np.asarray(self.discovered["label"]) == c]
        train = self.ctx.data.train
        imgs = "".join(
            f'<img src="{thumbnail(train.load(int(i)).permute(1, 2, 0).numpy())}" alt="">'
            for i in members[:SAMPLES]
        )
        return len(members), imgs

    def _previous(self) -> tuple[dict[int, str], dict[int, int], set[int]]:
        """Names, merges and rejections of a labels.json saved earlier for these clusters."""
        try:
            labels = read_labels(self.folder / DISCOVERED, self.known)
        except UserError as err:
            log.warning("label: the saved labels are not shown (%s)", err)
            labels = None
        if labels is None:
            return {}, {}, set()
        names = {cl["clusters"][0]: cl["name"] for cl in labels["classes"]}
        merged = {c: cl["clusters"][0] for cl in labels["classes"] for c in cl["clusters"][1:]}
        return names, merged, set(labels["rejected"])

    def _card(self, c: int, names: dict, merged: dict, rejected: set) -> str:
        size, imgs = self.samples[c]
        default = (self.discovered.get("class_names") or [])[c - self.k : c - self.k + 1]
        me = cluster_name(c, self.k)
        options = "".join(
            f'<option value="{o}"{" selected" * (merged.get(c) == o)}>'
            f"{cluster_name(o, self.k)}</option>"
            for o in range(self.k, self.k + self.n)
            if o != c
        )
        value, hint = html.escape(names.get(c, "")), html.escape(default[0] if default else me)
        return (
            f'<section class="cluster" id="{me}" data-cluster="{c}" data-name="{me}">'
            f'<h2>{me} <span class="size">({size} images)</span></h2>'
            f'<div class="samples">{imgs}</div><div class="controls">'
            f'<label>Name <input class="name" type="text" value="{value}" '
            f'placeholder="{hint}"></label>'
            f'<label>Same class as <select class="merge"><option value="">'
            f"(none: its own class)</option>{options}</select></label>"
            f'<label><input class="reject" type="checkbox"{" checked" * (c in rejected)}> '
            "Reject as noise</label></div></section>"
        )

    def html(self) -> str:
        """The page, with what labels.json holds now (a reload shows what was saved)."""
        previous = self._previous()
        cards = "".join(self._card(c, *previous) for c in range(self.k, self.k + self.n))
        known = html.escape(", ".join(self.known))
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Name the discovered classes: {html.escape(self.ctx.cfg.name)}</title>"
            f'<style>{CSS}</style></head><body data-token="{self.token}">'
            "<h1>Name the discovered classes</h1>"
            f"<p>Run <code>{html.escape(str(self.run_dir))}</code>: {self.n} clusters "
            f"found by {html.escape(str(self.discovered.get('method')))} in the unlabelled "
            "images. Give each a name, or mark it the same class as another cluster "
            "(they are merged), or reject it as noise. Names must differ from each other "
            f"and from the known classes ({known}).</p>"
            f'<div id="clusters">{cards}</div>'
            '<button id="save" type="button">Save labels</button>'
            '<div id="message" role="status"></div>'
            f"<script>{SCRIPT}</script></body></html>"
        )
        return self._html

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
        if self.path != "/labels":
            self._json(404, {"errors": [f"no endpoint {self.path}"]})
            return
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY:
            self._json(413, {"errors": ["too large"]})
            return
        self._json(*self.page.save(self.rfile.read(size)))

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
