"""iBOT loss (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022,
arXiv 2111.07832): [CLS] self-distillation across views + masked-patch self-distillation
within a view, with centering and sharpening of the teacher's outputs.

Paper defaults: student temperature 0.1; teacher temperature warmed up linearly 0.04 -> 0.07
over the first 30 epochs, then constant; separate EMA centers for [CLS] and patch outputs, both
with momentum 0.9; loss weights lambda1 = lambda2 = 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def teacher_temp_schedule(
    epoch: float, warmup_temp: float = 0.04, temp: float = 0.07, warmup_epochs: int = 30
) -> float:
    """Teacher temperature at `epoch`: linear warmup_temp -> temp, then constant.

    As the official `np.linspace(warmup_temp, temp, warmup_epochs)`: epoch 0 gives warmup_temp
    and epoch warmup_epochs - 1 already gives temp.
    """
    if epoch >= warmup_epochs:
        return temp
    frac = max(epoch, 0) / (warmup_epochs - 1) if warmup_epochs > 1 else 0.0
    return warmup_temp + (temp - warmup_temp) * min(frac, 1.0)


def teacher_entropy(teacher_cls: torch.Tensor, temp: float, center: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the teacher's centred, sharpened [CLS] distribution.

    teacher_cls: [N, K] head outputs; center: [1, K]. Collapse to one dimension drives it to 0,
    collapse to the uniform distribution to log K; training should stay in between.
    """
    logp = F.log_softmax((teacher_cls.detach().float() - center) / temp, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


def _all_reduce_mean(x: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of x over all processes / (count * world size); a plain x / count without DDP."""
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
        world = dist.get_world_size()
    return x / (count * world)


class IBOTLoss(nn.Module):
    """[CLS] (DINO) loss + masked-patch (MIM) loss, teacher centering and sharpening.

    Shapes (B images per crop, crops stacked crop-major as `torch.cat(crops)`):
    - student_cls: [ncrops * B, K], global crops first, then local crops;
    - student_patch: [ngcrops * B, L, K2] (patch tokens of the masked global crops);
    - teacher_cls: [ngcrops * B, K]; teacher_patch: [ngcrops * B, L, K2] (unmasked global crops);
    - student_mask: [ngcrops * B, L] or [ngcrops * B, h, w] bool, True = masked.

    `cls`: mean over pairs (teacher global crop q, student crop v != q) of the cross-entropy
    H(softmax((t - center) / tau_t), softmax(s / tau_s)), averaged over images.
    `patch`: for each global crop, the same cross-entropy per patch (center2), averaged over the
    masked patches of each image, then over the images (an unmasked image adds 0, as in the
    official code), then over the global crops. `loss` = lambda1 * cls + lambda2 * patch.
    The centers are updated (EMA of the batch mean of the raw teacher outputs) after each call.
    The official code keeps a separate patch temperature schedule; its defaults equal the [CLS]
    one, which `warmup_teacher_patch_temp` / `teacher_patch_temp` (None = same) can override.
    """

    center: torch.Tensor
    center2: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        ngcrops: int,
        nlcrops: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.07,
        warmup_teacher_temp_epochs: int = 30,
        nepochs: int = 100,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        warmup_teacher_patch_temp: float | None = None,
        teacher_patch_temp: float | None = None,
    ) -> None:
        super().__init__()
        if ngcrops < 2 and nlcrops < 1:
            raise ValueError("the [CLS] loss needs two views: ngcrops >= 2 or nlcrops >= 1")
        if warmup_teacher_temp_epochs > nepochs:
            raise ValueError(
                f"warmup_teacher_temp_epochs {warmup_teacher_temp_epochs} > nepochs {nepochs}"
            )
        self.ngcrops, self.nlcrops = ngcrops, nlcrops
        self.ncrops = ngcrops + nlcrops
        self.warmup_teacher_temp, self.teacher_temp = warmup_teacher_temp, teacher_temp
        self.warmup_teacher_patch_temp = (
            warmup_teacher_temp if warmup_teacher_patch_temp is None else warmup_teacher_patch_temp
        )
        self.teacher_patch_temp = teacher_temp if teacher_patch_temp is None else teacher_patch_temp
        self.warmup_teacher_temp_epochs, self.nepochs = warmup_teacher_temp_epochs, nepochs
        self.student_temp = student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))

    def teacher_temps(self, epoch: float) -> tuple[float, float]:
        """(τ_t for [CLS], τ_t for patches) at `epoch`."""
        warm = self.warmup_teacher_temp_epochs
        return (
            teacher_temp_schedule(epoch, self.warmup_teacher_temp, self.teacher_temp, warm),
            teacher_temp_schedule(
                epoch, self.warmup_teacher_patch_temp, self.teacher_patch_temp, warm
            ),
        )

    def forward(
        self,
        student_cls: torch.Tensor,
        student_patch: torch.Tensor,
        teacher_cls: torch.Tensor,
        teacher_patch: torch.Tensor,
        student_mask: torch.Tensor,
        epoch: float,
    ) -> dict[str, torch.Tensor]:
        """Shapes in the class docstring -> dict(cls=[], patch=[], loss=[])."""
        temp, temp2 = self.teacher_temps(epoch)
        s_cls = (student_cls / self.student_temp).log_softmax(-1).chunk(self.ncrops)
        s_patch = (student_patch / self.student_temp).log_softmax(-1).chunk(self.ngcrops)
        t_cls = ((teacher_cls - self.center) / temp).softmax(-1).detach().chunk(self.ngcrops)
        t_patch = ((teacher_patch - self.center2) / temp2).softmax(-1).detach()
        t_patch = t_patch.chunk(self.ngcrops)
        masks = student_mask.flatten(1).float().chunk(self.ngcrops)  # [B, L] each

        cls_terms, patch_terms = [], []
        for q in range(self.ngcrops):
            ce = -(t_patch[q] * s_patch[q]).sum(-1)  # [B, L], same view: masked patches only
            per_image = (ce * masks[q]).sum(-1) / masks[q].sum(-1).clamp(min=1.0)
            patch_terms.append(per_image.mean())
            for v in range(self.ncrops):
                if v != q:  # [CLS]: different views only
                    cls_terms.append(-(t_cls[q] * s_cls[v]).sum(-1).mean())
        cls_loss = torch.stack(cls_terms).mean() * self.lambda1
        patch_loss = torch.stack(patch_terms).mean() * self.lambda2
        self.update_center(teacher_cls, teacher_patch)
        return dict(cls=cls_loss, patch=patch_loss, loss=cls_loss + patch_loss)

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * batch mean (over all processes) of teacher outputs.

        teacher_cls: [N, K]; teacher_patch: [N, L, K2] (each image's patches averaged first).
        """
        cls_mean = _all_reduce_mean(teacher_cls.float().sum(0, keepdim=True), len(teacher_cls))
        patch_sum = teacher_patch.float().mean(1).sum(0, keepdim=True)
        patch_mean = _all_reduce_mean(patch_sum, len(teacher_patch))  # [1, K2]
        m, m2 = self.center_momentum, self.center_momentum2
        self.center.mul_(m).add_(cls_mean, alpha=1 - m)
        self.center2.mul_(m2).add_(patch_mean.unsqueeze(0), alpha=1 - m2)
