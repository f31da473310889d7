import pytest
import torch

from uniframework.config import load_config
from uniframework.errors import UserError
from uniframework.io import read_json
from uniframework.openset.stage import OpensetOptions, auto_label_unknowns
from uniframework.pipeline import run

from ..conftest import TINY
from ..test_report import tiny_run  # noqa: F401  (the shared run; pytest finds it by name)


def test_auto_labelling_takes_the_highest_energy_fraction():
    logits = torch.tensor([[9.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 0.2], [3.0, 3.0]])
    picked = auto_label_unknowns(logits, fraction=0.6, temperature=1.0)
    # the three flattest rows (highest energy) are the least known
    assert sorted(picked.tolist()) == [1, 3, 4]


def test_openset_needs_novel_classes(tmp_path):
    no_pool = "stages.supervised.energy_margins=null"  # else supervised asks for a pool first
    cfg = load_config(
        "configs/demo-novel.yaml", [*TINY, "data.num_known=10", "data.num_tasks=1", no_pool]
    )
    with pytest.raises(UserError, match="needs novel classes"):
        run(cfg, tmp_path)


def test_detector_must_be_among_the_scorers():
    with pytest.raises(UserError, match="detector 'knn' must be one of scorers"):
        load_config(
            "configs/demo-novel.yaml",
            ["stages.openset.scorers=[msp]", "stages.openset.detector=knn"],
        )


def test_every_scorer_and_the_detector_report_both_fpr95(tiny_run):  # noqa: F811
    """`fpr95` (OpenOOD) and `fpr95_in` (the scorers' papers) per scorer and for the detector;
    read from the suite's shared tiny run (built once per session)."""
    metrics = read_json(tiny_run / "metrics.json")
    for key in ("fpr95", "fpr95_in"):
        for scorer in OpensetOptions().scorers:
            assert 0.0 <= metrics[f"openset.{scorer}.{key}"] <= 1.0, (scorer, key)
        assert metrics[f"openset.{key}"] == metrics[f"openset.energy_weibull.{key}"]
