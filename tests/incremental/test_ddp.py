"""The incremental stage under DDP: 2 CPU processes (gloo); rank 0 selects the memory."""

import json
import subprocess
import sys

import pytest
import yaml

from uniframework.io import read_json

from ..conftest import TINY


@pytest.mark.slow
def test_incremental_under_ddp_shares_one_memory(tmp_path):
    config = tmp_path / "c.yaml"
    opts = {"learner": "icarl", "memory": 20, "max_epochs": 1, "figures": False}
    config.write_text(yaml.safe_dump({"stages": [{"incremental": opts}]}))
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "uniframework", "run", str(config), *TINY,
         "data.num_known=2", "data.num_tasks=3", "trainer.devices=2", "trainer.strategy=ddp",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["incremental.num_classes"] == 10 and "incremental.nme_avg_acc" in metrics
    mem = read_json(out / "incremental/memory.json")
    assert {len(v) for v in mem["classes"].values()} == {2} and len(mem["classes"]) == 10
