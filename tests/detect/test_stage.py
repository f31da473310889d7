"""A tiny `detect` run end to end: 2 tasks, 1 epoch each; artifacts, predict, resume."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from uniframework.config import load_config
from uniframework.detect.predict import predict_images
from uniframework.errors import UserError
from uniframework.pipeline import run

TINY = {
    "num_train": 28,
    "num_test": 6,
    "image_size": 64,
    "digit_size": [12, 22],
    "objects": [2, 3],
    "val_fraction": 0.25,
    "task_sizes": [2, 2],
    "exemplars_per_class": 2,
    "finetune_epochs": 1,
    "rpn_pre_nms": 100,
    "rpn_post_nms": 40,
    "roi_batch": 32,
    "pseudo_label_score": 0.3,  # the earlier classes pseudo-labelled in task 2's images
    "unknown_over_known": 0.5,  # as configs/detect-digits.yaml
}
PER_TASK = ("map50_all", "map50_cur", "u_recall50", "wi", "a_ose")
FINAL = ("map50", "map50_prev", "map50_cur", "u_recall50", "wi", "a_ose")


def _cfg(**opts):
    stage = json.dumps({**TINY, **opts})
    return load_config(
        None,
        [
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            f"stages=[{{detect: {stage}}}]",
        ],
    )


@pytest.fixture(scope="module")
def ore_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ore")
    return run_dir, run(_cfg(), run_dir)


def test_tiny_run_writes_every_metric(ore_run):
    run_dir, metrics = ore_run
    for t in (1, 2):
        for k in PER_TASK:
            assert f"detect.task{t}.{k}" in metrics
    assert "detect.task2.map50_prev" in metrics and "detect.task1.map50_prev" not in metrics
    for k in FINAL:
        assert f"detect.{k}" in metrics
    assert all(0.0 <= metrics[f"detect.{k}"] <= 1.0 for k in ("map50", "u_recall50"))
    assert metrics["detect.a_ose"] >= 0 and metrics["detect.wi"] >= 0
    for f in ("detect/detections.png", "detect/owod_metrics.png", "detect/weibull.json"):
        assert (run_dir / f).is_file()
    assert (run_dir / "checkpoints" / "detect.safetensors").is_file()
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


def test_the_identifier_is_fitted_after_each_task(ore_run):
    run_dir, _ = ore_run
    fits = [json.loads((run_dir / f"detect/task{t}.json").read_text())["weibull"] for t in (1, 2)]
    for fit in fits:
        assert fit is not None and fit["identifier"]["known"] is not None
        unknown = fit["identifier"]["unknown"]  # a degenerate fit is fitted again, not dropped
        assert unknown is not None and unknown["shape"] >= 1.0
    assert fits[0]["identifier"]["known"] != fits[1]["identifier"]["known"]  # refitted
    final = json.loads((run_dir / "detect/weibull.json").read_text())
    assert final == fits[1]  # the run ends with the last task's identifier


def test_predict_images_survives_a_bad_file(ore_run, tmp_path):
    run_dir, _ = ore_run
    good, bad = tmp_path / "scene.png", tmp_path / "broken.jpg"
    Image.new("RGB", (64, 64), (128, 90, 40)).save(good)
    bad.write_bytes(b"not an image")
    out = predict_images(run_dir, [bad, good], min_score=0.0)
    assert out[0]["path"] == str(bad) and "error" in out[0]
    assert set(out[1]) == {"path", "boxes", "labels", "scores"}
    assert len(out[1]["boxes"]) == len(out[1]["labels"]) == len(out[1]["scores"])
    assert set(out[1]["labels"]) <= {"0", "1", "2", "3", "unknown"}
    # `unknown_over_known` is read from the weights: no known box left under a stronger unknown
    boxes, scores = torch.tensor(out[1]["boxes"]), torch.tensor(out[1]["scores"])
    unk = torch.tensor([lab == "unknown" for lab in out[1]["labels"]], dtype=torch.bool)
    if unk.any() and (~unk).any():
        covered = box_iou(boxes[~unk], boxes[unk]) >= 0.5
        stronger = scores[unk][None, :] > scores[~unk][:, None]
        assert not (covered & stronger).any()
    with pytest.raises(UserError, match="no finished detect stage"):
        predict_images(tmp_path, [good])


def test_resume_skips_finished_tasks(ore_run, tmp_path, caplog):
    run_dir, metrics = ore_run
    # a run cut off during task 2: only task 1's checkpoint and record exist
    copy = tmp_path / "cut"
    (copy / "checkpoints" / "detect").mkdir(parents=True)
    (copy / "detect").mkdir()
    for f in ("checkpoints/detect/task1.safetensors", "detect/task1.json"):
        (copy / f).write_bytes((run_dir / f).read_bytes())
    with caplog.at_level("INFO", logger="uniframework.detect.stage"):
        again = run(_cfg(), copy)
    assert "task 1 finished earlier" in caplog.text
    assert {k: v for k, v in again.items() if ".task1." in k} == {
        k: v for k, v in metrics.items() if ".task1." in k
    }


def test_the_exemplar_fine_tune_keeps_training_the_unknown_class(tmp_path, monkeypatch):
    """Task 2's class-balanced fine-tune auto-labels unknown RoIs at every step, as the task's
    training does: the unknown output keeps getting targets there (ORE's fine-tune must not
    leave the unknown class untrained)."""
    from uniframework.detect import stage as detect_stage
    from uniframework.detect.model import OpenWorldDetector

    loop, unknown_rois = {"what": ""}, {}
    train, forward = detect_stage.train_detector, OpenWorldDetector.forward_train

    def train_spy(model, *args, **kwargs):
        loop["what"] = args[7]  # "task 2 fine-tune", ...
        return train(model, *args, **kwargs)

    def forward_spy(self, images, targets):
        out = forward(self, images, targets)
        if self.training:  # (not the held-out pass of the identifier's fit)
            labels = out[3]  # the sampled RoIs' model labels
            rois = unknown_rois.setdefault(loop["what"], [])
            rois.append(int((labels == self.roi_heads.unknown_label).sum()))
        return out

    monkeypatch.setattr(detect_stage, "train_detector", train_spy)
    monkeypatch.setattr(OpenWorldDetector, "forward_train", forward_spy)
    run(_cfg(), tmp_path)
    tune = unknown_rois["task 2 fine-tune"]
    assert tune and all(n >= 1 for n in tune)  # every step has its auto-labelled unknowns
    assert all(n >= 1 for n in unknown_rois["task 1"] + unknown_rois["task 2"])


def test_baseline_has_no_unknowns(tmp_path):
    metrics = run(_cfg(method="baseline", task_sizes=[2]), tmp_path)
    assert metrics["detect.u_recall50"] == 0.0
    assert "detect.map50_prev" not in metrics  # one task: nothing was known before
    out = predict_images(tmp_path, [])
    assert out == []


def test_bad_task_class_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="class 'eleven'"):
        run(_cfg(tasks=[["1"], ["eleven"]]), tmp_path)


def test_unmeetable_normalised_margin_is_a_user_error():
    # on L2-normalised features distances are at most 2; margin 10 is the raw default
    with pytest.raises(UserError, match="at most 2"):
        _cfg(contrastive_features="normalised", contrastive_margin=10.0)
    _cfg(contrastive_features="normalised")  # margin 1.0 by default
