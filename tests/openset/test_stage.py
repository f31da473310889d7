import pytest
import torch

from uniframework.config import load_config
from uniframework.errors import UserError
from uniframework.openset.stage import auto_label_unknowns
from uniframework.pipeline import run

from ..conftest import TINY


def test_auto_labelling_takes_the_highest_energy_fraction():
    logits = torch.tensor([[9.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 0.2], [3.0, 3.0]])
    picked = auto_label_unknowns(logits, fraction=0.6, temperature=1.0)
    # the three flattest rows (highest energy) are the least known
    assert sorted(picked.tolist()) == [1, 3, 4]


def test_openset_needs_novel_classes(tmp_path):
    no_pool = "stages.supervised.energy_margins=null"  # else supervised asks for a pool first
    cfg = load_config(
        "configs/demo.yaml", [*TINY, "data.num_known=10", "data.num_tasks=1", no_pool]
    )
    with pytest.raises(UserError, match="needs novel classes"):
        run(cfg, tmp_path)


def test_detector_must_be_among_the_scorers():
    with pytest.raises(UserError, match="detector 'knn' must be one of scorers"):
        load_config(
            "configs/demo.yaml", ["stages.openset.scorers=[msp]", "stages.openset.detector=knn"]
        )
