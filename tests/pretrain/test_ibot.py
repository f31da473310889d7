"""iBOT (uniframework.pretrain.ibot): online tokenizer (EMA teacher), centering, [CLS] and
masked-patch self-distillation against naive references, schedules, masks, heads, wiring and a
short training run."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from uniframework.pretrain.ibot import (
    IBOT,
    IBOTHead,
    IBOTLoss,
    IBOTViT,
    cosine_schedule,
    ema_update,
    ibot_masks,
    ibot_vit_tiny_patch4,
    make_teacher,
    teacher_entropy,
    teacher_temp_schedule,
)


def tiny_ibot(nlcrops: int = 2, out_dim: int = 128, **kw) -> IBOT:
    torch.manual_seed(0)
    return ibot_vit_tiny_patch4(
        embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0, out_dim=out_dim, hidden_dim=64,
        bottleneck_dim=64, nlcrops=nlcrops, **kw,
    )  # fmt: skip


def crops(b: int = 4, seed: int = 0, nlcrops: int = 2):
    g = torch.Generator().manual_seed(seed)
    glob = [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]
    loc = [torch.randn(b, 3, 16, 16, generator=g) for _ in range(nlcrops)]
    return glob, loc


def digits(n: int = 32) -> torch.Tensor:
    """sklearn digits, 8 px -> 32 px, 3 channels, in [-1, 1]: [n, 3, 32, 32]."""
    x = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x.repeat(1, 3, 1, 1) - 0.5) / 0.5


def ce(t_logits: torch.Tensor, s_logits: torch.Tensor, t_temp: float, s_temp: float = 0.1):
    """Naive H(softmax(t / t_temp), softmax(s / s_temp)) for one pair of vectors (float64)."""
    t_logits, s_logits = t_logits.double(), s_logits.double()
    p = torch.exp(t_logits / t_temp) / torch.exp(t_logits / t_temp).sum()
    log_q = s_logits / s_temp - torch.log(torch.exp(s_logits / s_temp).sum())
    return -(p * log_q).sum()


def call(loss: IBOTLoss, *args):
    """Run the loss on a copy, so its centers stay as they were for the next call."""
    return copy.deepcopy(loss)(*args)


def test_teacher_gets_no_gradients_and_moves_by_the_ema_rule():
    model = tiny_ibot()
    glob, loc = crops()
    out = model(glob, loc, model.random_masks(4, torch.Generator().manual_seed(0)), epoch=0)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert model.student.backbone.mask_token.grad is not None
    names = ["backbone.blocks.0.attn.qkv.weight", "head.mlp.0.weight", "backbone.mask_token"]
    before = {n: p.detach().clone() for n, p in model.teacher.named_parameters() if n in names}
    torch.optim.SGD(model.student.parameters(), lr=0.5).step()
    student = dict(model.student.named_parameters())
    assert not torch.allclose(student[names[0]], before[names[0]])  # the student moved
    model.update_teacher(0.9)
    teacher = dict(model.teacher.named_parameters())
    for n in names:
        assert torch.allclose(teacher[n], 0.9 * before[n] + 0.1 * student[n].detach(), atol=1e-7)
    model.train()
    assert not model.teacher.training and model.student.training


def test_make_teacher_and_ema_update_on_a_plain_module():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.weight, student.weight) and teacher.weight is not student.weight
    w0 = teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, 0.996)
    assert torch.allclose(teacher.weight, 0.996 * w0 + 0.004 * student.weight.detach())
    with pytest.raises(ValueError, match="parameter names"):
        ema_update(teacher, torch.nn.Linear(3, 2, bias=False), 0.5)


def test_centers_update_by_ema_of_the_batch_mean():
    torch.manual_seed(0)
    loss = IBOTLoss(16, 8, ngcrops=2, nlcrops=1, nepochs=10, warmup_teacher_temp_epochs=3)
    c0, c2 = torch.randn(1, 16), torch.randn(1, 1, 8)
    loss.center.copy_(c0)
    loss.center2.copy_(c2)
    t_cls, t_patch = torch.randn(6, 16), torch.randn(6, 5, 8)
    loss(torch.randn(9, 16), torch.randn(6, 5, 8), t_cls, t_patch, torch.ones(6, 5, dtype=bool), 0)
    assert torch.allclose(loss.center, 0.9 * c0 + 0.1 * t_cls.mean(0, keepdim=True), atol=1e-6)
    assert torch.allclose(loss.center2, 0.9 * c2 + 0.1 * t_patch.mean((0, 1)), atol=1e-6)
    assert loss.center.shape == (1, 16) and loss.center2.shape == (1, 1, 8)


def test_cls_loss_skips_same_view_pairs_and_matches_a_naive_loop():
    torch.manual_seed(0)
    ng, nl, b, k = 2, 3, 4, 16
    loss = IBOTLoss(k, k, ng, nl, nepochs=10, warmup_teacher_temp_epochs=3, lambda1=0.7)
    loss.center.copy_(torch.randn(1, k))
    s_cls, t_cls = torch.randn((ng + nl) * b, k), torch.randn(ng * b, k)
    s_patch, t_patch = torch.randn(ng * b, 5, k), torch.randn(ng * b, 5, k)
    mask = torch.rand(ng * b, 5) < 0.5
    epoch = 1  # temperature 0.055 (mid warm-up)
    out = call(loss, s_cls, s_patch, t_cls, t_patch, mask, epoch)
    terms = []
    for q in range(ng):
        for v in range(ng + nl):
            if v == q:
                continue
            pair = [
                ce(t_cls[q * b + i] - loss.center[0], s_cls[v * b + i], 0.055) for i in range(b)
            ]
            terms.append(sum(pair) / b)
    assert len(terms) == ng * (ng + nl) - ng
    assert torch.allclose(out["cls"].double(), 0.7 * sum(terms) / len(terms), rtol=1e-5)
    assert torch.allclose(out["loss"], out["cls"] + out["patch"])


def test_patch_loss_sees_masked_positions_only_and_matches_a_naive_loop():
    torch.manual_seed(1)
    ng, b, n_tok, k = 2, 3, 6, 8
    loss = IBOTLoss(4, k, ng, 0, nepochs=10, warmup_teacher_temp_epochs=0)  # temperature 0.07
    loss.center2.copy_(torch.randn(1, 1, k))
    s_cls, t_cls = torch.randn(ng * b, 4), torch.randn(ng * b, 4)
    s_patch, t_patch = torch.randn(ng * b, n_tok, k), torch.randn(ng * b, n_tok, k)
    mask = torch.rand(ng * b, n_tok) < 0.5
    mask[1] = False  # one unmasked image: adds 0, as in the official code
    mask[0, 0], mask[0, 1] = True, False
    base = call(loss, s_cls, s_patch, t_cls, t_patch, mask, 5)["patch"]
    per_crop = []
    for q in range(ng):
        per_image = []
        for i in range(q * b, (q + 1) * b):
            c = [ce(t_patch[i, j] - loss.center2[0, 0], s_patch[i, j], 0.07) for j in range(n_tok)]
            masked = [c[j] for j in range(n_tok) if mask[i, j]]
            per_image.append(sum(masked) / len(masked) if masked else 0.0)
        per_crop.append(sum(per_image) / b)
    assert torch.allclose(base.double(), sum(per_crop) / ng, rtol=1e-5)
    for pos, same in (((0, 1), True), ((1, 3), True), ((0, 0), False)):
        changed = s_patch.clone()
        changed[pos] += 3.0 * torch.randn(k)
        new = call(loss, s_cls, changed, t_cls, t_patch, mask, 5)["patch"]
        assert torch.allclose(new, base) == same
    spatial = call(loss, s_cls, s_patch, t_cls, t_patch, mask.reshape(ng * b, 2, 3), 5)["patch"]
    assert torch.allclose(spatial, base)  # [N, h, w] masks work too


def test_teacher_temperature_schedule():
    assert teacher_temp_schedule(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temp_schedule(14.5, 0.04, 0.07, 30) == pytest.approx(0.055)
    assert teacher_temp_schedule(29, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temp_schedule(100, 0.04, 0.07, 30) == pytest.approx(0.07)
    official = np.linspace(0.04, 0.07, 30)  # the official schedule's warm-up part
    assert all(teacher_temp_schedule(e) == pytest.approx(official[e]) for e in range(30))
    loss = IBOTLoss(4, 4, 2, 0, nepochs=100, teacher_patch_temp=0.05)
    assert loss.teacher_temps(0) == pytest.approx((0.04, 0.04))
    assert loss.teacher_temps(40) == pytest.approx((0.07, 0.05))


def test_momentum_cosine_schedule_endpoints():
    assert cosine_schedule(0.996, 1.0, 0, 1000) == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 500, 1000) == pytest.approx(0.998)
    assert cosine_schedule(0.996, 1.0, 1000, 1000) == pytest.approx(1.0)
    values = [cosine_schedule(0.996, 1.0, s, 50) for s in range(51)]
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_ibot_masks_unmasked_or_blockwise_with_ratio_in_range():
    masks = ibot_masks(200, 8, (0.1, 0.5), 0.5, torch.Generator().manual_seed(0))
    assert masks.shape == (200, 8, 8) and masks.dtype == torch.bool
    counts = masks.flatten(1).sum(1)
    masked = counts > 0
    assert 60 < int(masked.sum()) < 140  # about half the images are masked
    assert counts[masked].min() >= int(0.1 * 64) and counts[masked].max() <= int(0.5 * 64)
    assert counts[masked].float().std() > 3  # the ratio varies per image
    assert not ibot_masks(8, 8, mask_prob=0.0).any()
    assert (ibot_masks(8, (4, 6), mask_prob=1.0).flatten(1).sum(1) >= 2).all()
    with pytest.raises(ValueError, match="ratio_range"):
        ibot_masks(2, 8, (0.5, 0.1))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_weight_normed_last_layer(norm_last_layer):
    torch.manual_seed(0)
    head = IBOTHead(32, 64, 48, 64, 16, norm_last_layer=norm_last_layer, shared_head=False)
    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad == (not norm_last_layer)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(64))
    cls, patch = head(torch.randn(3, 1 + 5, 32))
    assert cls.shape == (3, 64) and patch.shape == (3, 5, 48)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    (cls.square().sum() - patch.sum()).backward()
    opt.step()
    rows = torch.cat([head.last_layer.weight, head.last_layer2.weight]).norm(dim=1)
    assert torch.allclose(rows, torch.ones(112), atol=1e-6) == norm_last_layer


def test_shared_head_uses_one_last_layer():
    torch.manual_seed(0)
    head = IBOTHead(32, 64, hidden_dim=64, bottleneck_dim=16, shared_head=True)
    assert head.last_layer2 is None and head.patch_out_dim == 64
    tokens = torch.randn(2, 4, 32)
    cls, patch = head(tokens)
    per_token = torch.stack([head.forward_cls(tokens[:, j]) for j in (1, 2, 3)], 1)
    assert torch.allclose(patch, per_token, atol=1e-6)
    assert torch.allclose(cls, head.forward_cls(tokens[:, 0]), atol=1e-6)
    with pytest.raises(ValueError, match="patch_out_dim"):
        IBOTHead(32, 64, patch_out_dim=32, shared_head=True)


def test_vit_mask_token_and_local_crop_sizes():
    torch.manual_seed(0)
    vit = IBOTViT(img_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    x = torch.randn(2, 3, 32, 32)
    mask = ibot_masks(2, 8, mask_prob=1.0, generator=torch.Generator().manual_seed(0))
    seen = {}
    vit.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    assert vit(x, mask).shape == (2, 1 + 64, 32)
    tokens, pos = seen["x"][:, 1:], vit.pos_embed[0, 1:].detach()
    m = mask.flatten(1)
    assert torch.allclose(tokens[m], (vit.mask_token[0, 0].detach() + pos).expand(2, -1, -1)[m])
    patches = vit.patch_embed(x).flatten(1, 2).detach()
    assert torch.allclose(tokens[~m], (patches + pos)[~m])
    assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 1 + 16, 32)  # local crop
    with pytest.raises(ValueError, match="does not fit"):
        vit(x, mask[:, :4, :4])


def test_forward_wiring_teacher_unmasked_globals_student_masked_globals_and_locals():
    model = tiny_ibot()
    calls = []

    def record(who):
        return lambda m, args, kwargs: calls.append((who, tuple(args[0].shape), len(args) > 1))

    model.teacher.backbone.register_forward_pre_hook(record("teacher"), with_kwargs=True)
    model.student.backbone.register_forward_pre_hook(record("student"), with_kwargs=True)
    glob, loc = crops(nlcrops=2)
    out = model(glob, loc, model.random_masks(4), epoch=0)
    assert calls == [
        ("teacher", (8, 3, 32, 32), False),
        ("student", (8, 3, 32, 32), True),
        ("student", (8, 3, 16, 16), False),
    ]
    assert set(out) == {"cls", "patch", "loss", "teacher_entropy"}
    assert not out["teacher_entropy"].requires_grad
    with pytest.raises(ValueError, match="local crops"):
        model(glob, loc[:1], model.random_masks(4), epoch=0)
    weights = model.backbone_state_dict()
    assert "mask_token" not in weights and "pos_embed" in weights


def test_teacher_entropy_bounds():
    k = 32
    assert teacher_entropy(torch.zeros(4, k), 0.04, torch.zeros(1, k)) == pytest.approx(math.log(k))
    peaked = torch.zeros(4, k)
    peaked[:, 3] = 10.0
    assert teacher_entropy(peaked, 0.04, torch.zeros(1, k)) < 1e-6


def test_eight_steps_on_digits_lower_the_loss_without_collapse():
    model = tiny_ibot(nlcrops=2, out_dim=128)
    x = digits(32)
    glob = [x, x.flip(-1)]
    loc = [
        F.interpolate(c, size=(16, 16), mode="bilinear") for c in (x[..., :24, :24], x[..., 8:, 8:])
    ]
    masks = model.random_masks(32, torch.Generator().manual_seed(0))
    with torch.no_grad():  # centers at the running mean of the teacher, as after some training
        t_cls, t_patch = model.teacher.head(model.teacher.backbone(torch.cat(glob)))
        for _ in range(50):
            model.loss.update_center(t_cls, t_patch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=0.04)
    losses, entropies = [], []
    for step in range(8):
        out = model(glob, loc, masks, epoch=0)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        model.update_teacher(cosine_schedule(0.996, 1.0, step, 8))
        losses.append(out["loss"].item())
        entropies.append(out["teacher_entropy"].item())
    assert losses[-1] < 0.9 * losses[0]
    assert min(entropies) > 0.1 * math.log(128)  # collapse to one dimension drives it to 0


def test_factory_defaults():
    model = ibot_vit_tiny_patch4(depth=1)
    head, loss = model.student.head, model.loss
    assert head.out_dim == head.patch_out_dim == 512 and head.last_layer2 is None
    assert head.mlp[0].out_features == 256 and head.mlp[-1].out_features == 64
    assert (loss.ngcrops, loss.nlcrops, loss.student_temp) == (2, 0, 0.1)
    assert (loss.center_momentum, loss.center_momentum2) == (0.9, 0.9)
    assert model.student.backbone.patch_embed.grid_size == (8, 8)
    assert "student.backbone.mask_token" in model.no_weight_decay()


# ---------------------------------------------------------------- official defaults


def test_teacher_shares_its_head_by_default_even_when_the_student_does_not():
    model = tiny_ibot(shared_head=False)  # official --shared_head false, --shared_head_teacher
    student, teacher = model.student.head, model.teacher.head
    assert student.last_layer2 is not None and teacher.last_layer2 is None
    assert not any("last_layer2" in n for n, _ in model.teacher.named_parameters())
    tokens = torch.randn(2, 1 + 64, 32)
    cls, patch = teacher(tokens)
    per_token = torch.stack([teacher.forward_cls(tokens[:, j]) for j in (1, 2, 3)], 1)
    assert torch.allclose(patch[:, :3], per_token, atol=1e-6)  # patches through the [CLS] layer
    glob, loc = crops()
    model(glob, loc, model.random_masks(4), epoch=0)["loss"].backward()
    assert student.last_layer2.parametrizations.weight.original1.grad is not None
    # EMA: the teacher's one last layer follows the student's [CLS] layer (official: by name)
    name = "head.last_layer.parametrizations.weight.original1"
    before = dict(model.teacher.named_parameters())[name].clone()
    with torch.no_grad():
        student.last_layer.parametrizations.weight.original1.add_(1.0)
    model.update_teacher(0.9)
    s_v = student.last_layer.parametrizations.weight.original1
    assert torch.allclose(dict(model.teacher.named_parameters())[name], 0.9 * before + 0.1 * s_v)


def test_separate_teacher_head_is_an_option():
    model = tiny_ibot(shared_head=False, shared_head_teacher=False)
    assert model.teacher.head.last_layer2 is not None  # the teacher's own patch layer
    assert tiny_ibot().teacher.head.last_layer2 is None  # shared student: shared teacher
    with pytest.raises(ValueError, match="shared_head_teacher needs patch_out_dim"):
        tiny_ibot(shared_head=False, patch_out_dim=64)


def test_random_masks_use_the_official_16_patch_minimum_at_224px(monkeypatch):
    from uniframework.pretrain import masking

    areas, place = [], masking._place_block
    monkeypatch.setattr(
        masking, "_place_block", lambda m, n, a, *r: areas.append(a) or place(m, n, a, *r)
    )
    vit = IBOTViT(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    head, loss = IBOTHead(32, 16, hidden_dim=16, bottleneck_dim=8), IBOTLoss(16, 16, 2, 0)
    masks = IBOT(vit, head, loss, mask_prob=1.0).random_masks(4, torch.Generator().manual_seed(0))
    assert masks[0].shape == (4, 14, 14) and areas and set(areas) - {1} == {16}
    areas.clear()
    IBOT(vit, head, loss, mask_prob=1.0, min_num_patches=4).random_masks(4)
    assert set(areas) - {1} == {4}
