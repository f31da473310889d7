"""The pretrain stage under DDP: 2 CPU processes (gloo), MAE then supervised."""

import json
import subprocess
import sys

import pytest
import yaml

from uniframework.io import load_weights

from .test_stage import VIT


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mae", "ibot"])
def test_pretrain_under_ddp_hands_one_backbone_on(tmp_path, method):
    config = tmp_path / "c.yaml"
    opts = {"method": method, "linear_probe_iters": 0, "figures": False}
    if method == "ibot":
        opts["out_dim"] = 128
    config.write_text(yaml.safe_dump({"stages": [{"pretrain": opts}, {"supervised": {}}]}))
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "uniframework", "run", str(config), *VIT,
         "trainer.max_epochs=1", "trainer.devices=2", "trainer.strategy=ddp", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"pretrain.knn_acc", "supervised.known_acc"} <= set(metrics)
    state, meta = load_weights(out / "checkpoints/pretrain.safetensors")
    assert meta["stage"] == "pretrain" and "blocks.0.attn.qkv.weight" in state
    assert "backbone starts from" in r.stderr
