"""The realistic demo's discover stage under DDP (2 CPU processes, gloo): the counting run
trains on every rank, rank 0 chooses the count, and every rank trains on from it (a rank that
left after the counting run would leave rank 0 waiting in the next fit)."""

import json
import subprocess
import sys

import pytest

from ..conftest import TINY


@pytest.mark.slow
def test_the_count_is_chosen_once_and_every_rank_trains_it(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "uniframework", "run", "configs/demo.yaml", *TINY,
         "stages.discover.estimate_epochs=2", "stages.discover.max_epochs=1",
         "stages.incremental.max_epochs=1",
         "trainer.devices=2", "trainer.strategy=ddp", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    n = metrics["discover.num_novel"]
    assert n == metrics["discover.num_novel_est"] and 2 <= n <= 10  # counted by the heads
    assert f"count_score_{n}" in {k.split(".", 1)[1] for k in metrics}
    assert (out / "checkpoints/discover/last.ckpt").is_file()  # the training after the count
    assert metrics["incremental.num_classes"] == 5 + n
