"""Which epoch the supervised stage keeps: best val accuracy (default), lowest val loss, last."""

import csv

import torch

from uniframework.config import load_config
from uniframework.pipeline import run

from ..conftest import TINY


def _run(tmp_path, keep):
    cfg = load_config(
        "configs/demo-novel.yaml",
        [*TINY, "trainer.max_epochs=4", f"stages.supervised.keep={keep}"],
    )
    run(cfg.model_copy(update={"stages": cfg.stages[:1]}), tmp_path)
    return tmp_path / "checkpoints" / "supervised"


def _epoch(path):
    return torch.load(path, weights_only=True, map_location="cpu")["epoch"]


def test_keep_val_loss_keeps_the_epoch_of_the_lowest_validation_loss(tmp_path):
    ckpts = _run(tmp_path, "val_loss")
    with open(tmp_path / "logs" / "supervised" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["val_loss"]]
    losses = {int(r["epoch"]): float(r["val_loss"]) for r in rows}
    assert len(losses) == 4
    assert _epoch(ckpts / "best.ckpt") == min(losses, key=losses.get)


def test_keep_last_keeps_the_last_epoch(tmp_path):
    ckpts = _run(tmp_path, "last")
    assert not (ckpts / "best.ckpt").exists()
    assert _epoch(ckpts / "last.ckpt") == 3  # Lightning counts epochs from 0
