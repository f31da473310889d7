"""Kill anywhere, lose nothing: a run SIGKILLed inside every stage that trains, and between two
stages, then rerun with the same command, ends exactly as an uninterrupted run.

One tiny run of pretrain (MAE on a 1-block ViT) -> supervised -> discover (OpenMix) ->
incremental (ORE) -> detect (ORE) is killed five times in turn, each time as soon as a file
appears: inside pretrain, right after supervised is recorded in state.json, inside discover,
inside incremental task 1, inside detect task 1; each restart resumes what the previous run
left. Checked: each rerun resumed from the checkpoint the kill left (its log says so, and no
finished stage trained again), and the final metrics and every saved weight equal those of an
uninterrupted run of the same command, exactly. Exact equality holds on CPU because the
checkpoints carry the random states (Lightning fits: torch, numpy, Python, via the trainer's
RNG callback; detect: its loader's generator and torch's) and each stage, incremental task and
detect task starts from its own seed, so a rerun that skips finished work still draws what an
uninterrupted run draws. Without the random states a resumed run drifts (measured: pretrain
final_loss 1.6928 vs 1.6943, incremental nme_old_acc 0.378 vs 0.467, discover weights up to
0.12 apart), and a tolerance wide enough for that would let a lost epoch pass too.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uniframework.io import load_weights

from .conftest import TINY

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "demo-novel.yaml")
DETECT = {  # 2 tasks of 2 digit classes on 16 small scenes, 3 epochs each, a small detector
    "num_train": 16,
    "num_test": 4,
    "image_size": 48,
    "digit_size": [10, 18],
    "objects": [2, 3],
    "val_fraction": 0.25,
    "task_sizes": [2, 2],
    "fpn_levels": [2, 3],
    "fpn_channels": 16,
    "anchor_sizes": [16, 32, 64],
    "representation": 32,
    "rpn_pre_nms": 50,
    "rpn_post_nms": 20,
    "roi_batch": 16,
    "max_epochs": 3,
    "exemplars_per_class": 2,
    "finetune_epochs": 1,
    "figures": False,
}
STAGES = [
    {"pretrain": {"decoder_dim": 32, "linear_probe_iters": 0, "figures": False}},
    {"supervised": {}},
    {"discover": {"figures": False}},
    {
        "incremental": {
            "source": "discover",
            "learner": "ore",
            "memory": 40,
            "balanced_epochs": 1,
            "figures": False,
        }
    },
    {"detect": DETECT},
]
ARGS = [
    *TINY,
    "model.backbone=vit_tiny",  # pretrain needs a ViT: 1 block of width 32, 4 px patches
    "model.timm_kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
    "model.patch_size=4",
    "data.image_size=16",
    "data.max_per_class=20",
    f"stages={json.dumps(STAGES)}",
]
EPOCHS = 3  # TINY's trainer.max_epochs, every Lightning fit here: a kill as the first epoch's
# checkpoint appears has a whole epoch of slack to land before the last one's


# One thread per process: on 2 shared cores, OpenMP threads spinning against each other make
# each of these tiny ops ~10x slower; every run alike, so float sums keep the same order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


# Where each run is killed: (what, the file whose appearance triggers the kill, whether the kill
# came before the last epoch's checkpoint, the words before the checkpoint's path in the log of
# the next run, which resumes there).
KILLS = [
    (
        "inside pretrain",
        "checkpoints/pretrain/last.ckpt",
        lambda ckpt: _epoch(ckpt) < EPOCHS - 1,  # Lightning counts epochs from 0
        "resuming from",
    ),
    ("after supervised", "state.json", None, None),
    (
        "inside discover",
        "checkpoints/discover/last.ckpt",
        lambda ckpt: _epoch(ckpt) < EPOCHS - 1,
        "resuming from",
    ),
    (
        "inside incremental task 1",
        "checkpoints/incremental/ore/task1/last.ckpt",
        lambda ckpt: _epoch(ckpt) < EPOCHS - 1,
        "resuming from",
    ),
    (
        "inside detect task 1",
        "checkpoints/detect/task1/last.ckpt",
        lambda ckpt: _epoch(ckpt) < DETECT["max_epochs"],  # the loop counts epochs done
        "resuming after epoch",
    ),
]


def _reached(out: Path, trigger: str) -> bool:
    if trigger == "state.json":  # supervised is recorded: discover is about to start
        state = out / "state.json"
        return state.is_file() and "supervised" in json.loads(state.read_text())["done"]
    return (out / trigger).is_file()


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.slow
def test_a_run_killed_in_every_stage_ends_as_an_uninterrupted_one(tmp_path):
    def start(out: Path, log: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "uniframework", "run", CONFIG, *ARGS, "--out", str(out)]
        with log.open("w") as f:
            return subprocess.Popen(cmd, cwd=tmp_path, stdout=f, stderr=subprocess.STDOUT, env=ENV)

    reference = start(tmp_path / "reference", tmp_path / "reference.log")  # alongside the rest
    out, logs = tmp_path / "killed", []
    for what, trigger, early, _ in KILLS:
        logs.append(tmp_path / f"run{len(logs) + 1}.log")
        proc = start(out, logs[-1])
        deadline = time.time() + 600
        while not _reached(out, trigger) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.kill()
        assert proc.wait() == -9, f"{what}: the run ended first\n{logs[-1].read_text()[-3000:]}"
        if early is not None:
            assert early(out / trigger), f"{what}: killed only after the stage's last epoch"
    logs.append(tmp_path / "last.log")
    assert start(out, logs[-1]).wait() == 0, logs[-1].read_text()[-3000:]
    assert reference.wait() == 0, (tmp_path / "reference.log").read_text()[-3000:]
    reference = tmp_path / "reference"

    # each rerun went on from where the previous run was killed: no stage started afresh
    for (what, trigger, _, resumed), log in zip(KILLS, logs[1:]):
        if resumed is not None:
            line = f"{resumed} .*{re.escape(str(out / trigger))}"
            assert re.search(line, log.read_text()), f"the run after the kill {what} restarted"
    assert not (out / "logs/supervised/csv-2").exists()  # supervised was not trained again
    assert json.loads((out / "state.json").read_text())["done"] == [next(iter(s)) for s in STAGES]
    # ... and ended where the uninterrupted run did: every metric, every weight
    want = json.loads((reference / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got.keys() == want.keys()
    assert not {k: (got[k], want[k]) for k in want if not _same(got[k], want[k])}
    for ref in sorted((reference / "checkpoints").glob("*.safetensors")):
        (a, meta_a), (b, meta_b) = load_weights(ref), load_weights(out / "checkpoints" / ref.name)
        assert meta_a == meta_b and a.keys() == b.keys(), ref.name
        assert not [k for k in a if not torch.equal(a[k], b[k])], f"{ref.name}: weights differ"

    # killed after every stage's last checkpoint, before state.json recorded it: the rerun
    # finds each fit done (pretrain's final loss comes from its checkpoint) and agrees again
    (out / "state.json").unlink()
    (out / "metrics.json").unlink()
    assert start(out, tmp_path / "again.log").wait() == 0
    again = json.loads((out / "metrics.json").read_text())
    assert not {k: (again[k], want[k]) for k in want if not _same(again[k], want[k])}
