"""ORE's options of the supervised stage: contrastive clustering and the unknown class."""

import torch

from uniframework.config import load_config
from uniframework.io import load_weights
from uniframework.pipeline import RunContext, run
from uniframework.supervised.module import SupervisedModule, least_known
from uniframework.training import extract

from ..conftest import TINY


def test_least_known_by_energy_and_by_prototype():
    logits = torch.tensor([[8.0, 0.0], [0.0, 0.1], [4.0, 4.0]])
    assert least_known(torch.zeros(3, 2), logits, 1, "energy").tolist() == [1]
    protos = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    feats = torch.tensor([[0.1, 0.0], [5.0, 5.0], [1.0, 0.9]])
    assert least_known(feats, logits, 1, "prototype", protos).tolist() == [1]


def test_unknown_output_is_trained_and_prototypes_are_saved(tmp_path, monkeypatch):
    # record every prototype update of the run: its step, the store means it read, the result
    updates = []
    step = SupervisedModule._prototype_step

    def traced(self, features, y):
        before = self.prototypes.clone()
        out = step(self, features, y)
        if not torch.equal(before, self.prototypes):  # an update happened at this step
            means, _ = self.store.means()
            updates.append((self.global_step, means.clone(), self.prototypes.clone()))
        return out

    monkeypatch.setattr(SupervisedModule, "_prototype_step", traced)
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

    # The schedule, exactly: the prototypes start at the first step of epoch 1 as the store means
    # (momentum 0), then every 2nd step p <- 0.99 p + 0.01 mean (ORE's update), by hand.
    steps = [s for s, _, _ in updates]
    per_epoch = steps[0]  # the first step of epoch 1
    assert steps == [per_epoch] + [s for s in range(per_epoch + 1, 6 * per_epoch) if s % 2 == 0]
    assert torch.equal(updates[0][2], updates[0][1])
    for (_, _, before), (_, means, after) in zip(updates, updates[1:]):
        assert torch.allclose(after, 0.99 * before + 0.01 * means, rtol=1e-5, atol=1e-6)
    # the saved prototypes are those of the kept (best) epoch's checkpoint, like the weights
    assert any(torch.equal(p, after) for _, _, after in updates)
    # About 22 updates at momentum 0.99 keep 0.99^22 = 80% of the epoch-1 store means, so the
    # prototypes are anchors from a young network (as in ORE), not the final class means: what
    # the method promises is that the hinge loss pulls each class's features to its own anchor.
    # Nearest-prototype accuracy of held-out known digits: 0.84 on AVX-512 and on AVX2 kernels
    # (DNNL_MAX_CPU_ISA=AVX2), chance 0.2.
    nearest = torch.cdist(known["features"], p).argmin(1)
    assert (nearest == known["labels"]).float().mean() > 0.6
