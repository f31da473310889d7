"""The project's pretraining models beside the official code,, step for step.

    .venv/bin/python benchmarks/official.py [--official-root official] [--methods mae,simmim,ibot]
        [--configs 32px,224px] [--rounds 4] [--steps 10] [--warmup 2] [--threads N]
        [--compile] [--fused] [--bf16] [--blocked]
        [--attention auto|fused|explicit] [--out benchmarks/out/official.json]

The official code is imported from a git-ignored folder, never copied into the project. Make it
once, from the repository root:

    git clone https://github.com/facebookresearch/mae official/mae
    git clone https://github.com/microsoft/SimMIM official/SimMIM
    git clone https://github.com/bytedance/ibot official/ibot

(written against mae efb2a80, SimMIM d3e29bc and ibot da316d8, their latest commits in 2022).

What is timed: one full training step (forward, loss, backward, AdamW step, zero_grad; iBOT also
its EMA teacher update) of the project's model (A) and of the official model (B), built with the
same shapes: ViT-Ti (embed 192, depth 12, heads 3), same image size, patch, batch, mask ratio,
the same input tensor. In one process the steps are interleaved A, B, A, B, ... after `--warmup`
untimed steps each (`--blocked`: A's warm-up and timed steps, then B's, so neither step follows
the other model's); even rounds start with A, odd rounds with B. Per pair: the median step time
of each over all rounds, B / A (the project's speed-up, > 1 = the project is faster) with its
spread (min..max of the per-round ratios of medians), and both parameter counts.

Configurations (`--configs`): `32px` = ViT-Ti/4 at 32 px, batch 64; `224px` = ViT-Ti/16 at
224 px, batch 32. Project variants: `eager` (AdamW `fused=True` with `--fused`), `compile`
(torch.compile of the project model, only with `--compile`: minutes of compilation on a CPU)
and `bf16` (only with `--bf16`: the forward and loss under `torch.autocast("cpu",
torch.bfloat16)`, which is what the project's `trainer.precision: bf16-mixed` runs on a CPU).
The project's ViT layers take the attention path a fit would (`trainer.attention`, `--attention`:
`auto` = the explicit softmax(q k^T) v on a CPU; `fused` = F.scaled_dot_product_attention).
The official side runs as published: eager, plain AdamW, the installed timm's attention (fused
for MAE; SimMIM and iBOT have their own, explicit), fp32 (its training loops autocast with
`torch.cuda.amp`, which does nothing on a CPU); with `--bf16` it is also timed under the same
bf16 autocast, so the precision's share of a speed-up is visible. CPU only (no device syncs).

Per method:
- mae: official `models_mae.MaskedAutoencoderViT` against the project's `MaskedAutoencoderViT`,
  decoder as the project's stage default (128 wide, 2 blocks, 4 heads), norm_pix_loss on both
  (the official recipe's flag), mask ratio 0.75. The official model builds its blocks from the
  installed timm's `Block`, so on current timm it gets the same fused attention as the project;
  the row `official, manual attn` switches that attention to the explicit softmax(q k^T) v of
  timm 0.3.2 (which MAE pins), i.e. the official model as it ran when published. A last row
  times the project's MAE visible-only (0.75) against the same model with every token in the
  encoder (`pretrain_speed.mae_all_tokens_loss`): B / A there is MAE's own speed-up.
- simmim: official `VisionTransformerForSimMIM` + `SimMIM` (a BEiT-style ViT with its own
  attention) set up like the project's ViT-Ti: learned absolute position embedding, no relative
  position bias, no layer scale, a final norm (no mean pooling), encoder stride = patch; mask
  ratio 0.6 and the project's mask patch (`simmim_mask_patch_size`: 8 px at 32 px, 32 at 224).
  The parameter counts differ by design: the official attention has query and value biases but
  no key bias (depth x embed = 2304 parameters fewer; a key bias does not change the softmax).
- ibot: official `models.vit_tiny` (student: drop path 0.1, masked_im_modeling; teacher without)
  in `utils.MultiCropWrapper` with `models.head.iBOTHead` (shared head) and the official loss
  `main_ibot.iBOTLoss`, against the project's `ibot_vit_tiny_patch4`; both with the project's
  small head (hidden 256, bottleneck 64, K = 512), 2 global crops, no local crops. The counts
  differ by the embed dim (192): the project's teacher is a copy of the student and keeps its
  (unused) mask token; the official teacher is built without one. The official EMA update is
  inline in `train_one_epoch`, so the project's `ema_update` runs on both sides; gradient
  clipping, the last-layer freeze and the logging of `train_one_epoch` are left out on both.

Masks: where the official code draws them in its data loader (SimMIM, iBOT) one mask per
configuration is drawn outside the timed step with the project's generator and reused on both
sides; MAE draws its mask inside the model, on both sides.

Import shims (the official files stay untouched): each repository is imported on its own, with
its folder first on sys.path and its top-level modules (`util`, `utils`, `models`, ...) dropped
from sys.modules afterwards, since all three have such names.
- mae: timm >= 0.9's `Block` no longer takes `qk_scale` (MAE passes None): a subclass that
  accepts it replaces `timm.models.vision_transformer.Block` while `models_mae` is imported;
  `util/pos_embed.py` uses `np.float`, removed in NumPy 1.24: that module's `np` becomes numpy
  plus `float`. (`util/misc.py` needs the removed `torch._six`, but the model does not import it.)
- simmim: none; timm still ships the deprecated `timm.models.layers` (its warning is muted).
- ibot: `main_ibot` (home of `iBOTLoss`) imports `tensorboardX` and, through its evaluation
  code, `munkres`: stand-in modules where they are not installed (never called);
  `iBOTLoss.update_center` all-reduces over an initialised process group: this is one process,
  so `main_ibot.dist` becomes a single-process stand-in (all_reduce = identity, world size 1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.models.vision_transformer as timm_vit
import torch
import torch.nn as nn
from pretrain_speed import mae_all_tokens_loss  # benchmarks/ is sys.path[0] for this script

from uniframework.pretrain.ibot import ema_update, ibot_vit_tiny_patch4
from uniframework.pretrain.mae import MaskedAutoencoderViT
from uniframework.pretrain.masking import simmim_mask_patch_size
from uniframework.pretrain.simmim import SimMIM, SimMIMViT
from uniframework.training import set_attention

ROOT = Path(__file__).resolve().parents[1]
VIT_TI = dict(embed_dim=192, depth=12, num_heads=3)
MAE_DECODER = dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)  # stage default
MAE_RATIO, SIMMIM_RATIO = 0.75, 0.6
IBOT_OUT, IBOT_HIDDEN, IBOT_BOTTLENECK = 512, 256, 64  # ibot_vit_tiny_patch4's head
IBOT_DROP_PATH, EMA_MOMENTUM = 0.1, 0.996
LR = 1e-4  # any: the step time does not depend on it
REPOS = {"mae": "mae", "simmim": "SimMIM", "ibot": "ibot"}  # folders under --official-root


@dataclass(frozen=True)
class Config:
    size: int  # image side, px
    patch: int
    batch: int


CONFIGS = {"32px": Config(32, 4, 64), "224px": Config(224, 16, 32)}


@dataclass
class Runner:
    """One model with its own optimizer; `step()` runs one full training step."""

    label: str
    step: Callable[[], None]
    params: int


# ---------------------------------------------------------------- import shims


class _BlockWithQkScale(timm_vit.Block):
    """timm <= 0.4's `Block` signature: MAE passes `qk_scale=None` (= the default scale)."""

    def __init__(self, *args: Any, qk_scale: float | None = None, **kwargs: Any) -> None:
        if qk_scale is not None:
            raise ValueError("current timm has no qk_scale: only None is supported")
        super().__init__(*args, **kwargs)


class _NumpyWithFloat(types.ModuleType):
    """numpy plus `np.float` (an alias of the builtin float, removed in NumPy 1.24)."""

    float = float

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


class _SingleProcess:
    """The two torch.distributed calls of `iBOTLoss.update_center`, for one process."""

    @staticmethod
    def all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        return None  # the sum over one rank is the tensor itself

    @staticmethod
    def get_world_size(*args: Any, **kwargs: Any) -> int:
        return 1


def _stand_in(name: str, *attrs: str) -> types.ModuleType:
    """A module for an import the benchmark never calls: each attribute raises when used."""
    module = types.ModuleType(name)
    for attr in attrs:

        def unavailable(*args: Any, _what: str = f"{name}.{attr}", **kwargs: Any) -> None:
            raise RuntimeError(f"{_what} is a stand-in of benchmarks/official.py")

        setattr(module, attr, unavailable)
    return module


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


@contextlib.contextmanager
def official_repo(folder: Path, stand_ins: tuple[types.ModuleType, ...] = ()) -> Iterator[None]:
    """Import from one official repository: its folder first on sys.path, its top-level names
    free in sys.modules while inside and dropped afterwards (mae `util`, SimMIM and iBOT
    `models` / `utils`: the next repository must not find this one's). `stand_ins` fill
    imports that are not installed. The old code's deprecation and syntax warnings are muted."""
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: clone it first (see the docstring of {__file__})")
    names = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if p.is_dir()}

    def local(key: str) -> bool:
        return key.split(".")[0] in names

    saved = {key: sys.modules.pop(key) for key in list(sys.modules) if local(key)}
    added = [m for m in stand_ins if importlib.util.find_spec(m.__name__) is None]
    sys.modules.update({m.__name__: m for m in added})
    sys.path.insert(0, str(folder))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", SyntaxWarning)  # iBOT's swin: `is '*'`
            yield
    finally:
        sys.path.remove(str(folder))
        stale = [key for key in sys.modules if local(key)] + [m.__name__ for m in added]
        for key in stale:
            sys.modules.pop(key, None)
        sys.modules.update(saved)


# ---------------------------------------------------------------- steps


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _runner(
    label: str,
    model: nn.Module,
    loss: Callable[[nn.Module], torch.Tensor],
    fused: bool = False,
    after: Callable[[nn.Module], None] | None = None,
    use_compile: bool = False,
    bf16: bool = False,
) -> Runner:
    """A full training step of `model`: loss -> backward -> AdamW -> zero_grad -> after(model).

    `loss` gets the module to call (torch.compile's wrapper with use_compile); `after` gets the
    model itself (iBOT's EMA teacher update); `bf16`: the forward and loss under CPU autocast to
    bfloat16 (what `trainer.precision: bf16-mixed` does; weights and AdamW stay fp32)."""
    module = torch.compile(model) if use_compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, fused=True if fused else None)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss(module)
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(model)

    return Runner(label, step, _count(model))


def project_runners(
    model: nn.Module,
    loss: Callable[[nn.Module], torch.Tensor],
    args: argparse.Namespace,
    after: Callable[[nn.Module], None] | None = None,
) -> dict[str, Runner]:
    """`project` (eager); with --compile, `compiled` (a copy of the model, compiled); with
    --bf16, `bf16` (a copy, eager under bf16 autocast)."""
    fused = args.attention == "fused"  # a fit's `auto` on a CPU: explicit
    set_attention(model, fused)
    attention = "fused" if fused else "explicit"
    opt = f"{'fused AdamW' if args.fused else 'AdamW'}, {attention} attention"
    runners = {"project": _runner(f"project eager, {opt}", model, loss, args.fused, after)}
    if args.bf16:
        label = f"project eager bf16-mixed, {opt}"
        twin = copy.deepcopy(model)
        runners["bf16"] = _runner(label, twin, loss, args.fused, after, bf16=True)
    if args.compile:
        twin = copy.deepcopy(model)  # own weights and optimizer state
        label = f"project compile, {opt}"
        runners["compiled"] = _runner(label, twin, loss, args.fused, after, use_compile=True)
    return runners


def official_runners(
    runners: dict[str, Runner],
    build: Callable[[], nn.Module],
    loss: Callable[[nn.Module], torch.Tensor],
    args: argparse.Namespace,
    after: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """`official` (as published: on a CPU its `torch.cuda.amp.autocast` is off, so fp32) and,
    with --bf16, `official_bf16` (a second model from `build`, under the same bf16 autocast as
    the project's; built anew since iBOT's weight-normed head cannot be deep-copied). Returns
    the `official` model."""
    if args.bf16:
        runners["official_bf16"] = _runner(
            "official, bf16 autocast", build(), loss, after=after, bf16=True
        )
    model = build()
    runners["official"] = _runner("official", model, loss, after=after)
    return model


def _pairs(runners: dict[str, Runner]) -> list[tuple[str, str]]:
    """(A, B) pairs: each project variant against the official model as published; the bf16
    project also against the official model under the same autocast."""
    pairs = [(key, "official") for key in ("project", "compiled", "bf16") if key in runners]
    return pairs + [("bf16", "official_bf16")] * ("official_bf16" in runners)


# ---------------------------------------------------------------- mae


def official_mae(folder: Path, cfg: Config) -> nn.Module:
    with official_repo(folder), _patched(timm_vit, "Block", _BlockWithQkScale):
        models_mae = importlib.import_module("models_mae")  # binds Block = the shim
        importlib.import_module("util.pos_embed").np = _NumpyWithFloat("numpy")
        return models_mae.MaskedAutoencoderViT(
            img_size=cfg.size, patch_size=cfg.patch, **VIT_TI, **MAE_DECODER, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=True,
        )  # fmt: skip


def mae_runners(folder: Path, cfg: Config, imgs: torch.Tensor, args: argparse.Namespace):
    project = MaskedAutoencoderViT(
        img_size=cfg.size, patch_size=cfg.patch, **VIT_TI, **MAE_DECODER, norm_pix_loss=True,
        mask_ratio=MAE_RATIO,
    )  # fmt: skip

    def official_loss(m: nn.Module) -> torch.Tensor:
        return m(imgs, mask_ratio=MAE_RATIO)[0]

    runners = project_runners(project, lambda m: m(imgs, MAE_RATIO)[0], args)
    official = official_runners(runners, partial(official_mae, folder, cfg), official_loss, args)
    manual = copy.deepcopy(official)  # timm 0.3.2's only path: softmax(q k^T * scale) v
    set_attention(manual, fused=False)
    runners["manual"] = _runner("official, manual attn (timm 0.3.2)", manual, official_loss)
    # MAE's own speed-up: the same model (a copy) with the encoder on every token
    runners["all_tokens"] = _runner(
        "project, encoder on all tokens",
        copy.deepcopy(project),
        lambda m: mae_all_tokens_loss(m, imgs, MAE_RATIO),
        args.fused,
    )
    pairs = _pairs(runners) + [("project", "manual"), ("project", "all_tokens")]
    if args.bf16:  # the same precision and attention path on both sides
        twin = copy.deepcopy(manual)
        label = "official, manual attn (timm 0.3.2), bf16 autocast"
        runners["manual_bf16"] = _runner(label, twin, official_loss, bf16=True)
        pairs.append(("bf16", "manual_bf16"))
    return runners, pairs


# ---------------------------------------------------------------- simmim


def official_simmim(folder: Path, cfg: Config) -> nn.Module:
    with official_repo(folder):
        simmim = importlib.import_module("models.simmim")
        encoder = simmim.VisionTransformerForSimMIM(
            img_size=cfg.size, patch_size=cfg.patch, in_chans=3, num_classes=0, **VIT_TI,
            mlp_ratio=4, qkv_bias=True, drop_rate=0.0, drop_path_rate=0.0,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values=None, use_abs_pos_emb=True,
            use_rel_pos_bias=False, use_shared_rel_pos_bias=False, use_mean_pooling=False,
        )  # fmt: skip
        return simmim.SimMIM(encoder=encoder, encoder_stride=cfg.patch)


def simmim_runners(folder: Path, cfg: Config, imgs: torch.Tensor, args: argparse.Namespace):
    encoder = SimMIMViT(img_size=cfg.size, patch_size=cfg.patch, **VIT_TI)
    mask_patch = simmim_mask_patch_size(cfg.size, cfg.patch)
    project = SimMIM(
        encoder, encoder.encoder_stride, mask_patch_size=mask_patch, mask_ratio=SIMMIM_RATIO
    )
    mask = project.random_mask(cfg.batch)  # [B, H/p, W/p] bool, True = masked
    official_mask = mask.long()  # the official loader collates numpy int masks
    runners = project_runners(project, lambda m: m(imgs, mask)[0], args)
    build = partial(official_simmim, folder, cfg)
    official_runners(runners, build, lambda m: m(imgs, official_mask), args)
    return runners, _pairs(runners)


# ---------------------------------------------------------------- ibot


def official_ibot(folder: Path, cfg: Config) -> nn.ModuleDict:
    """Student, teacher (MultiCropWrapper: ViT + iBOTHead) and iBOTLoss, as `train_ibot`."""
    stand_ins = (_stand_in("tensorboardX", "SummaryWriter"), _stand_in("munkres", "Munkres"))
    with official_repo(folder, stand_ins):
        main_ibot = importlib.import_module("main_ibot")
        main_ibot.dist = _SingleProcess()  # update_center's all_reduce, one process
        vits = importlib.import_module("models.vision_transformer")
        heads = importlib.import_module("models.head")
        utils = importlib.import_module("utils")

        def network(**kwargs: Any) -> nn.Module:
            backbone = vits.vit_tiny(
                patch_size=cfg.patch, img_size=[cfg.size], return_all_tokens=True, **kwargs
            )
            head = heads.iBOTHead(
                VIT_TI["embed_dim"], IBOT_OUT, patch_out_dim=IBOT_OUT, hidden_dim=IBOT_HIDDEN,
                bottleneck_dim=IBOT_BOTTLENECK, shared_head=True,
            )  # fmt: skip
            return utils.MultiCropWrapper(backbone, head)

        student = network(drop_path_rate=IBOT_DROP_PATH, masked_im_modeling=True)
        teacher = network()
        teacher.load_state_dict(student.state_dict(), strict=False)  # no masked_embed
        teacher.requires_grad_(False)
        # out_dim, patch_out_dim, 2 global / 0 local crops, teacher temperatures ([CLS] 0.04 ->
        # 0.07, patches 0.04 -> 0.07) over 30 of 100 epochs: the project's defaults
        loss = main_ibot.iBOTLoss(IBOT_OUT, IBOT_OUT, 2, 0, 0.04, 0.07, 0.04, 0.07, 30, 100)
    return nn.ModuleDict(dict(student=student, teacher=teacher, loss=loss))


def ibot_runners(folder: Path, cfg: Config, imgs: torch.Tensor, args: argparse.Namespace):
    project = ibot_vit_tiny_patch4(img_size=cfg.size, patch_size=cfg.patch)
    crops = [imgs, imgs.flip(-1)]  # 2 global crops [B, 3, H, W]
    masks = project.random_masks(cfg.batch)  # 2 x [B, H/p, W/p] bool

    def official_loss(m: nn.ModuleDict) -> torch.Tensor:
        teacher_out = m["teacher"](crops)  # (cls [2B, K], patch [2B, L, K]); no grad needed
        student_out = m["student"](crops, mask=masks)
        return m["loss"](student_out, teacher_out, None, masks, 0)["loss"]

    runners = project_runners(
        project,
        lambda m: m(crops, [], masks, 0)["loss"],
        args,
        after=lambda m: m.update_teacher(EMA_MOMENTUM),
    )
    official_runners(
        runners,
        partial(official_ibot, folder, cfg),
        official_loss,
        args,
        after=lambda m: ema_update(m["teacher"], m["student"], EMA_MOMENTUM),
    )
    return runners, _pairs(runners)


BUILDERS = {"mae": mae_runners, "simmim": simmim_runners, "ibot": ibot_runners}


# ---------------------------------------------------------------- timing


def time_pair(
    a: Runner, b: Runner, rounds: int, steps: int, warmup: int, blocked: bool = False
) -> dict[str, Any]:
    """Interleaved steps A, B, A, B, ... (`blocked`: all of A's steps of a round, then all of
    B's); even rounds start with A, odd rounds with B."""
    every: dict[str, list[float]] = {"a": [], "b": []}
    per_round = []
    for r in range(rounds):
        order = [("a", a), ("b", b)] if r % 2 == 0 else [("b", b), ("a", a)]
        got: dict[str, list[float]] = {"a": [], "b": []}
        schedule = (
            [(i, k, run) for k, run in order for i in range(warmup + steps)]
            if blocked
            else [(i, k, run) for i in range(warmup + steps) for k, run in order]
        )
        for i, key, runner in schedule:
            start = time.perf_counter()
            runner.step()
            if i >= warmup:
                got[key].append(time.perf_counter() - start)
        ms_a, ms_b = statistics.median(got["a"]) * 1e3, statistics.median(got["b"]) * 1e3
        per_round.append(dict(first=order[0][0], ms_a=ms_a, ms_b=ms_b, ratio=ms_b / ms_a))
        for key in every:
            every[key] += got[key]
    ms_a, ms_b = statistics.median(every["a"]) * 1e3, statistics.median(every["b"]) * 1e3
    ratios = [r["ratio"] for r in per_round]
    return dict(
        a=a.label, b=b.label, ms_a=ms_a, ms_b=ms_b, speedup=ms_b / ms_a,
        spread=[min(ratios), max(ratios)], params_a=a.params, params_b=b.params,
        rounds=per_round,
    )  # fmt: skip


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [s for s in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in s]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return dict(
        processor=cpu, cores=os.cpu_count(), torch=torch.__version__, timm=timm.__version__,
        numpy=np.__version__, threads=torch.get_num_threads(),
    )  # fmt: skip


def official_commit(folder: Path) -> str:
    """The clone's commit; an unpacked archive (no .git) has none to read."""
    if not (folder / ".git").exists():
        return "unknown (no .git)"
    cmd = ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def row_line(row: dict[str, Any]) -> str:
    lo, hi = row["spread"]
    return (
        f"{row['method']:6s} {row['config']:5s} A {row['a']}: {row['ms_a']:.1f} ms, "
        f"B {row['b']}: {row['ms_b']:.1f} ms, B/A x{row['speedup']:.2f} ({lo:.2f}..{hi:.2f}), "
        f"params {row['params_a']:,} / {row['params_b']:,}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | config | A | B | A ms | B ms | B/A | B/A per round | params A | params B |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lo, hi = r["spread"]
        lines.append(
            f"| {r['method']} | {r['config']} | {r['a']} | {r['b']} | {r['ms_a']:.1f} | "
            f"{r['ms_b']:.1f} | {r['speedup']:.2f} | {lo:.2f}..{hi:.2f} | "
            f"{r['params_a']:,} | {r['params_b']:,} |"
        )
    return "\n".join(lines)


def _names(known: dict[str, Any]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if bad := [n for n in names if n not in known]:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {sorted(known)}")
        return names

    return parse


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--official-root", type=Path, default=ROOT / "official")
    p.add_argument("--methods", type=_names(BUILDERS), default=list(BUILDERS))
    p.add_argument("--configs", type=_names(CONFIGS), default=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=4, help="half start with A, half with B")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model and round")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    p.add_argument("--fused", action="store_true", help="fused AdamW for the project model")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (CPU)")
    p.add_argument(
        "--attention",
        choices=["auto", "fused", "explicit"],
        default="auto",
        help="the project's attention path (trainer.attention; auto = explicit on a CPU)",
    )
    p.add_argument(
        "--blocked", action="store_true", help="each round: A's steps, then B's (not A, B, A, B)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "official.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(
        f"machine: {info['processor']}, {info['cores']} cores, torch {info['torch']}, "
        f"timm {info['timm']}, numpy {info['numpy']}, threads {info['threads']}",
        flush=True,
    )
    commits = {m: official_commit(args.official_root / REPOS[m]) for m in args.methods}
    print(f"official code in {args.official_root}: {commits}", flush=True)
    if args.compile:
        print("--compile: the first warm-up step of each compiled model compiles", flush=True)
    torch.manual_seed(0)
    rows = []
    for method in args.methods:
        for name in args.configs:
            cfg = CONFIGS[name]
            imgs = torch.randn(cfg.batch, 3, cfg.size, cfg.size)
            folder = args.official_root / REPOS[method]
            runners, pairs = BUILDERS[method](folder, cfg, imgs, args)
            for key_a, key_b in pairs:
                a, b = runners[key_a], runners[key_b]
                row = dict(method=method, config=name, **time_pair(a, b, **_timing(args)))
                print(row_line(row), flush=True)
                rows.append(row)
            del runners  # free the models before the next configuration
    print(table(rows), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(machine=info, official=commits, args=_jsonable(vars(args)), rows=rows)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}", flush=True)


def _timing(args: argparse.Namespace) -> dict[str, int]:
    return dict(rounds=args.rounds, steps=args.steps, warmup=args.warmup, blocked=args.blocked)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


if __name__ == "__main__":
    main()
