"""ORE's options of the supervised stage: contrastive clustering and the unknown class."""

import torch

from uniframework.config import load_config
from uniframework.io import load_weights
from uniframework.pipeline import RunContext, run
from uniframework.supervised.module import least_known
from uniframework.training import extract

from ..conftest import TINY


def test_least_known_by_energy_and_by_prototype():
    logits = torch.tensor([[8.0, 0.0], [0.0, 0.1], [4.0, 4.0]])
    assert least_known(torch.zeros(3, 2), logits, 1, "energy").tolist() == [1]
    protos = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    feats = torch.tensor([[0.1, 0.0], [5.0, 5.0], [1.0, 0.9]])
    assert least_known(feats, logits, 1, "prototype", protos).tolist() == [1]


def test_unknown_output_is_trained_and_prototypes_are_saved(tmp_path):
    cfg = load_config(
        "configs/demo-novel.yaml",
        [
            *TINY,
            "trainer.max_epochs=6",
            "data.image_size=16",
            "stages.supervised.contrastive=true",
            "stages.supervised.unknown_class=true",
            "stages.supervised.energy_margins=null",  # the demo's; this test is the class alone
            "stages.supervised.unknown_topk=4",
            "stages.supervised.contrastive_start_epoch=1",
            "stages.supervised.prototype_every=2",
        ],
    )
    cfg = cfg.model_copy(update={"stages": cfg.stages[:2]})  # supervised, openset
    metrics = run(cfg, tmp_path)
    assert "supervised.known_as_unknown" in metrics and "openset.unknown_class.auroc" in metrics
    ctx = RunContext(cfg, tmp_path)
    model, meta = ctx.load_classifier("supervised")
    assert model.num_classes == 6 and meta["num_known"] == 5  # 5 known + "unknown"
    known = extract(model, ctx.data.loader(ctx.data.view("test_known")))
    novel = extract(model, ctx.data.loader(ctx.data.view("test_novel")))
    p_known = known["logits"].softmax(1)[:, 5].mean()
    p_novel = novel["logits"].softmax(1)[:, 5].mean()
    assert p_novel > 1.5 * p_known  # the extra output learned to claim the novel digits
    protos, _ = load_weights(tmp_path / "checkpoints/supervised_prototypes.safetensors")
    p = protos["prototypes"]
    assert p.shape == (5, model.feature_dim) and torch.isfinite(p).all() and p.abs().sum() > 0
    # each prototype lies nearer its own class's mean feature than any other class's
    means = torch.stack([known["features"][known["labels"] == c].mean(0) for c in range(5)])
    assert (torch.cdist(p, means).argmin(1) == torch.arange(5)).float().mean() >= 0.8
