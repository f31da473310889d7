"""The realistic demo's discover stage under DDP (2 CPU processes, gloo): rank 0 chooses the
count and every rank trains on from it. A rank that leaves early, or counts on its own with no
process group yet, leaves rank 0 waiting in the next fit."""

import json
import subprocess
import sys

import pytest

from ..conftest import TINY

DDP = ["trainer.devices=2", "trainer.strategy=ddp"]
QUICK = ["stages.discover.estimate_epochs=2", "stages.discover.max_epochs=1"]


def _run(out, *overrides):
    r = subprocess.run(
        [sys.executable, "-m", "uniframework", "run", "configs/demo.yaml", *TINY, *QUICK,
         "stages.incremental.max_epochs=1", *DDP, "--out", str(out), *overrides],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_the_count_is_chosen_once_and_every_rank_trains_it(tmp_path):
    out = tmp_path / "run"
    metrics = _run(out)  # estimate_on: heads, the counting run a fit on every rank
    n = metrics["discover.num_novel"]
    assert n == metrics["discover.num_novel_est"] and f"discover.count_score_{n}" in metrics
    assert (out / "checkpoints/discover/last.ckpt").is_file()  # the training after the count
    assert metrics["incremental.num_classes"] == 5 + n
    # counted on the supervised features, in a process whose first fit comes after the count
    # (no process group yet when the count is made)
    metrics = _run(out, "stages.discover.estimate_on=supervised", "--restart-from", "discover")
    assert metrics["incremental.num_classes"] == 5 + metrics["discover.num_novel"]


@pytest.mark.slow
def test_gcd_counts_after_its_fine_tuning_on_every_rank(tmp_path):
    metrics = _run(
        tmp_path / "run", "stages.discover.method=gcd", "stages.discover.estimate_on=supervised"
    )
    assert metrics["discover.num_novel"] == metrics["discover.num_novel_est"] >= 1
    assert metrics["incremental.num_classes"] == 5 + metrics["discover.num_novel"]
