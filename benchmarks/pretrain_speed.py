"""MAE's speed-up from encoding the visible tokens only, and each method's step throughput.

    .venv/bin/python benchmarks/pretrain_speed.py [--sizes 32 224] [--steps 5]

Speed-up: one training step (forward + backward + AdamW) of MAE at mask ratio 0.75 against the
*same* model whose encoder runs on all tokens, the masked ones replaced by the mask token (what
MAE avoids; the decoder, loss and masked positions are identical), same batch, timed in the same
run, median of `--steps` steps after 2 warm-up steps. Throughput: images/s of one training step
of MAE, SimMIM and iBOT (2 global crops, no local crops) on the same ViT.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from uniframework.pretrain.ibot import ibot_vit_tiny_patch4
from uniframework.pretrain.mae import MaskedAutoencoderViT
from uniframework.pretrain.masking import random_masking
from uniframework.pretrain.simmim import SimMIM, SimMIMViT

VITS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
}


def mae_all_tokens_loss(model: MaskedAutoencoderViT, imgs: torch.Tensor, ratio: float):
    """The same MAE step, but the encoder sees every position (mask tokens in the masked ones)."""
    x = model.patch_embed(imgs)  # [N, L, D]
    _, mask, _ = random_masking(x, ratio)  # the same kind of mask: [N, L], 1 = removed
    token = x.new_zeros(1, 1, x.shape[-1])  # a mask token (its value does not change the cost)
    x = torch.where(mask.bool()[..., None], token, x) + model.pos_embed[:, 1:, :]
    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(len(x), -1, -1)
    latent = model.norm(model.blocks(torch.cat([cls, x], 1)))  # [N, 1 + L, D]
    ids = torch.arange(x.shape[1]).expand(len(x), -1)  # no shuffle: decoder gets no mask tokens
    pred = model.forward_decoder(latent, ids)
    return model.forward_loss(imgs, pred, mask)


def step_time(loss_fn, params, imgs, steps: int) -> float:
    opt = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        loss_fn(imgs).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for size in args.sizes:
        patch, batch = (4, 64) if size == 32 else (16, 8)
        imgs = torch.randn(batch, 3, size, size)
        for name, geo in VITS.items():
            mae = MaskedAutoencoderViT(
                img_size=size,
                patch_size=patch,
                **geo,
                decoder_embed_dim=128,
                decoder_depth=2,
                decoder_num_heads=4,
            )
            t_vis = step_time(lambda x, m=mae: m(x, 0.75)[0], mae.parameters(), imgs, args.steps)
            t_all = step_time(
                lambda x, m=mae: mae_all_tokens_loss(m, x, 0.75), mae.parameters(), imgs, args.steps
            )
            print(
                f"MAE speed-up  {name:9s} {size:3d} px patch {patch:2d} batch {batch:3d}: "
                f"visible-only {t_vis * 1e3:7.1f} ms, all tokens {t_all * 1e3:7.1f} ms, "
                f"x{t_all / t_vis:.2f}",
                flush=True,
            )
    # throughput per method at equal backbone (ViT-tiny, 32 px, patch 4, batch 64)
    imgs = torch.randn(64, 3, 32, 32)
    geo = dict(img_size=32, patch_size=4, **VITS["vit_tiny"])
    mae = MaskedAutoencoderViT(**geo, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    simmim = SimMIM(SimMIMViT(**geo), 4, mask_patch_size=8, mask_ratio=0.6)
    ibot = ibot_vit_tiny_patch4(img_size=32)
    rows = {
        "mae": (lambda x: mae(x)[0], mae.parameters()),
        "simmim": (lambda x: simmim(x)[0], simmim.parameters()),
        "ibot": (
            lambda x: ibot([x, x.flip(-1)], [], ibot.random_masks(len(x)), 0)["loss"],
            [q for q in ibot.parameters() if q.requires_grad],
        ),
    }
    for name, (fn, params) in rows.items():
        t = step_time(fn, params, imgs, args.steps)
        print(f"throughput {name:7s} vit_tiny 32 px batch 64: {64 / t:7.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
